"""Checks and launch-shape choices for the paged attention launchers (torch-only, no triton)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ._checks import (
    check_dtype,
    check_int_vector,
    check_ndim,
    check_paged_cache,
    check_same_device,
)

MAX_HEAD_DIM = 256  # one head's row is one register tile; 64, 80, 96, 128 and 256 are tested
# NOTE: off CUDA the kernels run under the interpreter, where small tiles and a few splits keep
# the tests fast while still crossing tile and split boundaries at short lengths.
INTERPRETER_BLOCK = 16
INTERPRETER_TARGET_PROGRAMS = 16
PROGRAMS_PER_SM = 4  # the best of the sweep at batch 4, 32k context on H100 and H200 (README: GPU figures)


def check_attention_args(op: str, query: torch.Tensor, k_cache: torch.Tensor,
                         v_cache: torch.Tensor, block_tables: torch.Tensor,
                         seq_lens: torch.Tensor) -> None:
    """Shapes, dtypes, devices and strides shared by decode and prefill."""
    _, num_kv_heads, _, head_dim = check_paged_cache(op, k_cache, v_cache)
    check_ndim(op, "query", query, 3, "[tokens, num_heads, head_dim]")
    if query.shape[2] != head_dim or head_dim > MAX_HEAD_DIM:
        raise ValueError(f"{op}: head_dim must match the cache ({head_dim}) and be at most "
                         f"{MAX_HEAD_DIM}, got query shape {tuple(query.shape)}")
    if query.shape[1] % num_kv_heads:
        raise ValueError(f"{op}: num_heads ({query.shape[1]}) must be a multiple of num_kv_heads "
                         f"({num_kv_heads})")
    if query.dtype != k_cache.dtype:
        raise ValueError(f"{op}: query.dtype ({query.dtype}) must match the cache ({k_cache.dtype})")
    if query.stride(2) != 1:
        raise ValueError(f"{op}: query head_dim must be contiguous, got strides {query.stride()}")
    check_ndim(op, "block_tables", block_tables, 2, "[batch, max_blocks_per_seq]")
    check_dtype(op, "block_tables", block_tables, (torch.int32,))
    if block_tables.shape[1] > 1 and block_tables.stride(1) != 1:
        raise ValueError(f"{op}: block_tables rows must be contiguous, got strides {block_tables.stride()}")
    check_int_vector(op, "seq_lens", seq_lens, torch.int32, block_tables.shape[0])
    check_same_device(op, query=query, k_cache=k_cache, v_cache=v_cache,
                      block_tables=block_tables, seq_lens=seq_lens)


def block_tok_head_strides(cache: torch.Tensor) -> tuple[int, int, int]:
    """The strides of a `[num_blocks, num_kv_heads, block_size, head_dim]` cache in the order the
    kernels take them (block, token, KV head)."""
    return cache.stride(0), cache.stride(2), cache.stride(1)


def check_decode_args(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      block_tables: torch.Tensor, seq_lens: torch.Tensor) -> None:
    op = "paged_decode_attention"
    check_attention_args(op, query, k_cache, v_cache, block_tables, seq_lens)
    if block_tables.shape[0] != query.shape[0]:
        raise ValueError(f"{op}: block_tables has {block_tables.shape[0]} rows, query batch is "
                         f"{query.shape[0]}")


def is_compiled(device: torch.device) -> bool:
    """Whether Triton compiles for a GPU here; off CUDA the launchers run under the interpreter."""
    return device.type == "cuda"


@functools.cache
def _num_sms_of(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_sms(device: torch.device) -> int:
    return _num_sms_of(torch.cuda.current_device() if device.index is None else device.index)


@dataclass(frozen=True, slots=True)
class TileConfig:
    """Tile extents and dot flavour of the attention kernels at one head_dim/dtype/device."""

    block_m: int  # query rows per prefill program
    block_n: int  # keys per inner iteration
    block_d: int  # head_dim padded to a power of two (masked)
    upcast: bool  # feed tl.dot float32 operands (interpreter bf16 workaround, see _tiles.py)
    dot_precision: str


def tile_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> TileConfig:
    """Fixed, deterministic tiles: 64x64 on the GPU (64x32 at head_dim 256, to bound registers)."""
    block_d = max(16, 1 << (head_dim - 1).bit_length())  # tl.dot needs every dim >= 16
    precision = "ieee" if dtype == torch.float32 else "tf32"  # ieee: no tf32 rounding of fp32
    if not is_compiled(device):
        return TileConfig(INTERPRETER_BLOCK, INTERPRETER_BLOCK, block_d, True, precision)
    return TileConfig(64, 64 if block_d <= 128 else 32, block_d, False, precision)


@dataclass(frozen=True, slots=True)
class DecodeTuning:
    """Launch knobs of paged decode, for benchmarks and tuning; the defaults are what it uses."""

    block_n: int | None = None  # keys per inner step; None: tile_config's
    num_warps: int = 4
    num_stages: int = 3
    programs_per_sm: int = PROGRAMS_PER_SM


def choose_num_splits(num_programs: int, max_tiles: int, device: torch.device,
                      programs_per_sm: int = PROGRAMS_PER_SM) -> int:
    """Splits per sequence so that about `programs_per_sm` programs run per SM.

    Decided from host-known shapes only (no read of seq_lens, so no device sync).
    """
    if is_compiled(device):
        target = programs_per_sm * num_sms(device)
    else:
        target = INTERPRETER_TARGET_PROGRAMS
    wanted = -(-target // max(num_programs, 1))
    return max(1, min(wanted, max_tiles))
