"""Tensor parallelism over the reference decoder, the gpt-fast way: the plain model, its weights
sliced in place.

q/k/v and gate/up are column-parallel (each rank computes its heads and its slice of the MLP);
o and down are row-parallel, their partial outputs summed across the stage's ranks with one
all-reduce each. Embedding, norms and LM head stay whole on every rank (replicated): the
vocabulary projection is a small part of a step at these sizes, and a replicated head gives
every rank the same logits without another collective.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kvtier.model.decoder import DecoderLayer
from kvtier.model.layers import Linear
from kvtier.parallel.shards import RankShard


def shard_layer(layer: DecoderLayer, shard: RankShard, group: Any, head_dim: int) -> None:
    """Keep `shard`'s heads and MLP slice of one layer; sum o and down across `group`."""
    attn, mlp = layer.self_attn, layer.mlp
    _keep_rows(attn.q_proj, range(shard.heads.start * head_dim, shard.heads.stop * head_dim))
    kv_rows = range(shard.kv_heads.start * head_dim, shard.kv_heads.stop * head_dim)
    _keep_rows(attn.k_proj, kv_rows)
    _keep_rows(attn.v_proj, kv_rows)
    _keep_columns(attn.o_proj, range(shard.heads.start * head_dim, shard.heads.stop * head_dim))
    attn.num_heads, attn.num_kv_heads = len(shard.heads), len(shard.kv_heads)
    _keep_rows(mlp.gate_proj, shard.intermediate)
    _keep_rows(mlp.up_proj, shard.intermediate)
    _keep_columns(mlp.down_proj, shard.intermediate)
    for module in (attn.o_proj, mlp.down_proj):
        module.register_forward_hook(_all_reduce(group))


def _keep_rows(linear: Linear, rows: range) -> None:
    """Output features `rows` of a linear layer (its weight's rows and bias)."""
    linear.weight = nn.Parameter(linear.weight.data[rows.start:rows.stop].clone(), requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[rows.start:rows.stop].clone(), requires_grad=False)
    linear.out_features = len(rows)


def _keep_columns(linear: Linear, columns: range) -> None:
    """Input features `columns` of a bias-free linear layer (its weight's columns)."""
    assert linear.bias is None, "a row-parallel layer's bias would be summed tp times"
    linear.weight = nn.Parameter(linear.weight.data[:, columns.start:columns.stop].contiguous(), requires_grad=False)
    linear.in_features = len(columns)


def _all_reduce(group: Any) -> Any:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(output, group=group)
        return output
    return hook
