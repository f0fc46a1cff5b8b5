"""Which part of the model each rank of a tensor x pipeline parallel layout owns.

World ranks are stage-major: rank = stage * tp_size + tp_rank. A pipeline stage holds a run of
whole layers (earlier stages take one more when they do not divide evenly); within a stage, a
tensor-parallel rank holds `num_heads / tp` query heads and the KV heads they attend to:
`num_kv_heads / tp` of them, or, when tp exceeds the KV heads, one KV head replicated on
`tp / num_kv_heads` ranks (as vLLM does). The MLP's intermediate dimension splits evenly.

A rank's KV layout is its layers and KV heads (KVLayout.first_layer, first_kv_head), so the
objects it writes record that range and every layout's objects can be told apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kvtier.config import KVLayout, ModelConfig
from kvtier.errors import UnsupportedModelError


@dataclass(frozen=True, slots=True, kw_only=True)
class ParallelConfig:
    """`tp_size` ranks per pipeline stage, `pp_size` stages.

    `vocab_parallel` (the default): each tensor rank computes 1/tp of the LM head's vocabulary and
    the ranks all-gather the logits; False: every rank computes them all (kvtier/parallel/tensor.py).
    """

    tp_size: int = 1
    pp_size: int = 1
    vocab_parallel: bool = True

    def __post_init__(self) -> None:
        for name in ("tp_size", "pp_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelConfig.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.vocab_parallel, bool):
            raise ValueError(f"ParallelConfig.vocab_parallel must be a bool, got {self.vocab_parallel!r}")

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size


@dataclass(frozen=True, slots=True)
class RankShard:
    """What one rank owns: its stage and tensor rank, and the model's ranges it computes."""

    rank: int
    stage: int
    tp_rank: int
    layers: range
    heads: range  # query heads
    kv_heads: range
    intermediate: range  # the MLP's gate/up rows (down's columns)

    kv_replica: int = 0  # which copy of its KV heads this rank holds, when tensor ranks outnumber them

    def kv_layout(self, config: ModelConfig, block_size: int, dtype: torch.dtype | None = None) -> KVLayout:
        """This rank's KV layout: its layers and KV heads of `config`."""
        return KVLayout(num_layers=len(self.layers), num_kv_heads=len(self.kv_heads), head_dim=config.head_dim,
                        block_size=block_size, dtype=dtype or config.dtype, first_layer=self.layers.start,
                        first_kv_head=self.kv_heads.start)


def split_layers(num_layers: int, pp_size: int) -> list[range]:
    """`num_layers` as `pp_size` runs, as even as possible (earlier stages one longer)."""
    if pp_size > num_layers:
        raise UnsupportedModelError(f"--pp {pp_size} exceeds the model's {num_layers} layers; "
                                    f"use at most {num_layers} pipeline stages")
    base, extra = divmod(num_layers, pp_size)
    starts = [stage * base + min(stage, extra) for stage in range(pp_size + 1)]
    return [range(starts[s], starts[s + 1]) for s in range(pp_size)]


def check_tensor_parallel(config: ModelConfig, tp_size: int) -> None:
    """Raise UnsupportedModelError unless `config` splits `tp_size` ways (heads and MLP)."""
    problems = []
    if config.num_heads % tp_size:
        problems.append(f"{config.num_heads} query heads")
    kv = config.num_kv_heads
    if (kv % tp_size if tp_size <= kv else tp_size % kv):
        problems.append(f"{kv} KV heads (tp must divide them, or be a multiple of them)")
    if config.intermediate_size % tp_size:
        problems.append(f"an MLP of {config.intermediate_size}")
    if problems:
        sizes = [t for t in range(1, config.num_heads + 1) if config.num_heads % t == 0
                 and (kv % t == 0 if t <= kv else t % kv == 0) and config.intermediate_size % t == 0]
        raise UnsupportedModelError(f"--tp {tp_size} does not split {config.name}: {', '.join(problems)}; "
                                    f"tensor-parallel sizes that do: {sizes}")


def rank_shard(config: ModelConfig, parallel: ParallelConfig, rank: int) -> RankShard:
    """What world rank `rank` of `parallel` owns of `config`.

    Raises:
        UnsupportedModelError: the model does not split that way (the message lists sizes that do).
        ValueError: `rank` is not in [0, world_size).
    """
    if not 0 <= rank < parallel.world_size:
        raise ValueError(f"rank {rank} is outside a world of {parallel.world_size} ranks")
    tp = parallel.tp_size
    check_tensor_parallel(config, tp)
    stage, tp_rank = divmod(rank, tp)
    layers = split_layers(config.num_layers, parallel.pp_size)[stage]
    heads_per_rank, ffn_per_rank = config.num_heads // tp, config.intermediate_size // tp
    replica = 0
    if tp <= config.num_kv_heads:
        per = config.num_kv_heads // tp
        kv_heads = range(tp_rank * per, (tp_rank + 1) * per)
    else:  # NOTE: replicated: ranks tp_rank * kv // tp share one KV head, as their query heads all attend to it
        head, replica = divmod(tp_rank, tp // config.num_kv_heads)
        kv_heads = range(head, head + 1)
    return RankShard(rank=rank, stage=stage, tp_rank=tp_rank, layers=layers,
                     heads=range(tp_rank * heads_per_rank, (tp_rank + 1) * heads_per_rank), kv_heads=kv_heads,
                     intermediate=range(tp_rank * ffn_per_rank, (tp_rank + 1) * ffn_per_rank), kv_replica=replica)
