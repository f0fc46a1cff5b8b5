"""One tolerance table for comparing kernels with their references, keyed by dtype.

After vLLM's tests/kernels/allclose_default.py. A kernel's output and its float32 reference are
both rounded to the output dtype, so they may differ by about one ulp of the output plus the
kernel's own rounding of softmax weights to the cache dtype before P @ V.
"""
from __future__ import annotations

import torch

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},   # ulp(1.0) = 9.8e-4
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},  # ulp(1.0) = 7.8e-3
    torch.float32: {"atol": 1e-5, "rtol": 1.3e-5},
}


def tol(dtype: torch.dtype) -> dict[str, float]:
    """`atol`/`rtol` for torch.testing.assert_close at `dtype`."""
    if dtype not in TOLERANCES:
        raise ValueError(f"no tolerance for {dtype}; known: {sorted(map(str, TOLERANCES))}")
    return TOLERANCES[dtype]
