"""Tensor parallelism over the reference decoder, the gpt-fast way: the plain model, its weights
sliced in place.

q/k/v and gate/up are column-parallel (each rank computes its heads and its slice of the MLP);
o and down are row-parallel, their partial outputs summed across the stage's ranks with one
all-reduce each. Embedding and norms stay whole on every rank. The LM head is vocab-parallel
by default: each rank computes 1/tp of the vocabulary and the ranks all-gather the logits, the
same numbers on every rank. `ParallelConfig(vocab_parallel=False)` replicates it instead (every
rank computes all the logits, no collective). On Qwen2.5-0.5B's shape at TP=2 here (a 136M-weight
head, a quarter of the model) vocab-parallel served 5-56% more tokens/s in four of four rounds
(README's parallel section: `kvtier bench parallel --layouts tp2,tp2r`).
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


def shard_lm_head(lm_head: Linear, tp_rank: int, tp_size: int, group: Any) -> None:
    """Keep rank `tp_rank`'s 1/tp of the vocabulary rows; all-gather the logits over `group`.

    The vocabulary is cut into tp equal slices of ceil(vocab / tp) rows (the last padded with zero
    rows, its extra logits dropped after the gather), as all_gather takes equal parts. A head tied
    to the embedding is untied here: the embedding keeps its whole table.
    """
    vocab = lm_head.out_features
    per_rank = -(-vocab // tp_size)
    rows = lm_head.weight.data[tp_rank * per_rank:(tp_rank + 1) * per_rank]
    if rows.shape[0] < per_rank:
        rows = torch.cat([rows, rows.new_zeros(per_rank - rows.shape[0], rows.shape[1])])
    lm_head.weight = nn.Parameter(rows.clone(), requires_grad=False)
    lm_head.out_features = per_rank
    lm_head.register_forward_hook(_all_gather_logits(group, tp_size, vocab))


def _all_gather_logits(group: Any, tp_size: int, vocab: int) -> Any:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(output) for _ in range(tp_size)]
        dist.all_gather(parts, output.contiguous(), group=group)
        return torch.cat(parts, dim=-1)[..., :vocab].contiguous()  # NOTE: the logits are broadcast under PP
    return hook


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
