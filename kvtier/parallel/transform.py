"""parallelize: turn a whole Transformer into one rank's part of a tensor x pipeline parallel model."""
from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import nn

from kvtier.model.decoder import DecoderLayer, Transformer
from kvtier.model.weights import fingerprint
from kvtier.parallel.pipeline import PipelineStage
from kvtier.parallel.shards import ParallelConfig, RankShard, rank_shard
from kvtier.parallel.tensor import shard_layer, shard_lm_head


def parallelize(model: Transformer, parallel: ParallelConfig, rank: int, tp_group: Any = None) -> RankShard:
    """Slice `model` in place to what world rank `rank` computes; returns what it owns.

    The model keeps the whole model's fingerprint (so block hashes match every other layout),
    its stage's layers and, within them, its tensor-parallel heads and MLP slice, whose partial
    outputs are summed over `tp_group` (the ranks of its stage).

    Raises:
        UnsupportedModelError: the model does not split that way.
    """
    shard = rank_shard(model.config, parallel, rank)
    model.kv_fingerprint = fingerprint(model)  # NOTE: of the whole weights, before any are dropped
    layers = model.model.layers
    model.model.layers = nn.ModuleList(layers[i] for i in shard.layers)
    if parallel.tp_size > 1:
        for layer in model.model.layers:
            assert isinstance(layer, DecoderLayer)
            shard_layer(layer, shard, tp_group, model.config.head_dim)
        if parallel.vocab_parallel:
            shard_lm_head(model.lm_head, shard.tp_rank, parallel.tp_size, tp_group)
    model.layer_range = (shard.layers.start, shard.layers.stop)
    model.kv_head_range = (shard.kv_heads.start, shard.kv_heads.stop)
    if parallel.pp_size > 1:
        tp, last = parallel.tp_size, parallel.pp_size - 1
        model.stage = PipelineStage(is_first=shard.stage == 0, is_last=shard.stage == last,
                                    previous_rank=rank - tp if shard.stage > 0 else None,
                                    next_rank=rank + tp if shard.stage < last else None, logits_rank=last * tp)
    return shard


def stage_groups(parallel: ParallelConfig) -> list[Any]:
    """One process group per pipeline stage, of its tensor-parallel ranks (every rank must call this)."""
    tp = parallel.tp_size
    return [dist.new_group(list(range(stage * tp, (stage + 1) * tp))) for stage in range(parallel.pp_size)]
