"""Argument checks shared by the launchers: each raises ValueError naming the values it saw.

Torch-only (no triton), so the checks cost nothing at import and can be tested on their own.
"""
from __future__ import annotations

import torch

CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_dtype(op: str, name: str, tensor: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if tensor.dtype not in allowed:
        raise ValueError(f"{op}: {name}.dtype must be one of {allowed}, got {tensor.dtype}")


def check_ndim(op: str, name: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    if tensor.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D {layout}, got shape {tuple(tensor.shape)}")


def check_same_device(op: str, **tensors: torch.Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"{op}: all tensors must be on one device, got {devices}")
    return next(iter(devices.values()))


def check_same_dtype(op: str, **tensors: torch.Tensor) -> torch.dtype:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) != 1:
        raise ValueError(f"{op}: tensors must share one dtype, got {dtypes}")
    return next(iter(dtypes.values()))


def check_shape(op: str, name: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}, got {tuple(tensor.shape)}")


def check_inner_contiguous(op: str, name: str, tensor: torch.Tensor, num_inner: int) -> None:
    """The last `num_inner` dims must be laid out densely (row-major) so a row is one run."""
    expected = 1
    for dim in range(tensor.dim() - 1, tensor.dim() - 1 - num_inner, -1):
        if tensor.shape[dim] > 1 and tensor.stride(dim) != expected:
            raise ValueError(f"{op}: {name} must be contiguous in its last {num_inner} dims, got "
                             f"shape {tuple(tensor.shape)} strides {tensor.stride()}")
        expected *= tensor.shape[dim]


def check_contiguous(op: str, name: str, tensor: torch.Tensor) -> None:
    if not tensor.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous, got shape {tuple(tensor.shape)} "
                         f"strides {tensor.stride()}")


def check_paged_cache(op: str, k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, ...]:
    """k_cache, v_cache: [num_blocks, num_kv_heads, block_size, head_dim], same shape and dtype."""
    check_ndim(op, "k_cache", k_cache, 4, "[num_blocks, num_kv_heads, block_size, head_dim]")
    check_shape(op, "v_cache", v_cache, tuple(k_cache.shape))
    check_dtype(op, "k_cache", k_cache, CACHE_DTYPES)
    check_same_dtype(op, k_cache=k_cache, v_cache=v_cache)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.stride(-1) != 1:
            raise ValueError(f"{op}: {name} head_dim must be contiguous, got strides {cache.stride()}")
    return tuple(k_cache.shape)


def check_int_vector(op: str, name: str, tensor: torch.Tensor, dtype: torch.dtype,
                     length: int) -> None:
    check_dtype(op, name, tensor, (dtype,))
    check_shape(op, name, tensor, (length,))
    if length > 1 and tensor.stride(0) != 1:
        raise ValueError(f"{op}: {name} must be contiguous, got stride {tensor.stride()}")
