"""Compile every kernel, at its CUDA launch configuration, for a GPU target without a GPU.

Run as `python -m tests.kernels.aot_compile [--arch 90] [--full]` (NOT under TRITON_INTERPRET).
The launchers run on CPU tensors with a stand-in driver; a jit cache hook compiles each kernel
to a cubin with the bundled ptxas and skips the launch. Prints one JSON line per kernel variant.
This catches what the interpreter cannot: code the compiler rejects, and shared-memory use.
"""
from __future__ import annotations

import argparse
import json
import os
from itertools import product

import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("aot_compile must run without TRITON_INTERPRET=1")

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.driver import driver

from kvtier.kernels import _attention_args


class _StandInDriver:
    """Just enough of a driver for JITFunction.run to reach the cache hook."""

    def __init__(self, target: GPUTarget) -> None:
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


def _install(target: GPUTarget, results: list[dict]) -> None:
    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
        src = ASTSource(fn.jit_function, compile["signature"], compile["constants"],
                        compile["configs"][0])
        options = {"num_warps": compile["num_warps"], "num_stages": compile["num_stages"]}
        kernel = triton.compile(src, target=target, options=options)
        results.append({"kernel": fn.name, "shared_bytes": kernel.metadata.shared,
                        "cubin_bytes": len(kernel.asm["cubin"]),
                        "constants": {str(k): str(v) for k, v in compile["constants"].items()}})
        return True  # compiled here; skip the launch

    driver.set_active(_StandInDriver(target))
    knobs.runtime.jit_cache_hook = hook
    _attention_args.is_compiled = lambda device: True  # pick the CUDA tiles for CPU tensors
    _attention_args.num_sms = lambda device: 132


def _launch_all(dtypes, head_dims) -> None:
    from kvtier.kernels.copy_blocks import gather_blocks, scatter_blocks
    from kvtier.kernels.paged_attention import paged_decode_attention
    from kvtier.kernels.paged_prefill import paged_prefill_attention
    from kvtier.kernels.store_kv import store_kv
    for dtype, head_dim in product(dtypes, head_dims):
        k_cache = torch.zeros(8, 8, 16, head_dim, dtype=dtype)  # [blocks, kv_heads, block_size, dim]
        query = torch.zeros(4, 32, head_dim, dtype=dtype)
        tables, lens = torch.zeros(4, 2, dtype=torch.int32), torch.ones(4, dtype=torch.int32)
        paged_decode_attention(query, k_cache, k_cache, tables, lens, 0.1)
        starts = torch.arange(5, dtype=torch.int32)
        paged_prefill_attention(query, k_cache, k_cache, tables, starts, lens, 0.1)
        store_kv(query[:, :8], query[:, :8], k_cache, k_cache, torch.tensor([1, -1, 5, 7]))
        pool = torch.zeros(8, 2, 2, 8, 16, head_dim, dtype=dtype)
        staging = torch.zeros(2, 2, 2, 8, 16, head_dim, dtype=dtype)
        ids = torch.tensor([3, 1])
        gather_blocks(pool, ids, staging)
        scatter_blocks(staging, ids, pool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="SM version, e.g. 80, 90")
    parser.add_argument("--full", action="store_true", help="every dtype and head_dim")
    args = parser.parse_args()
    results: list[dict] = []
    _install(GPUTarget("cuda", args.arch, 32), results)
    if args.full:
        _launch_all([torch.float16, torch.bfloat16, torch.float32], [64, 80, 96, 128, 256])
    else:
        _launch_all([torch.bfloat16], [128])
        _launch_all([torch.float16], [80])
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
