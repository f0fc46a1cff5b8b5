"""The GPU check's measurements: copy bandwidths, paged decode and block transfers, and their timers.

Every kernel result is checked against its reference before it is timed. Throughputs are stated
as GB/s and as a fraction of the bandwidth the same card reaches with a plain copy.
"""
from __future__ import annotations

import functools
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benches.gpu.cases import DecodeCase, TransferCase, decode_inputs, torch_decode_baseline

Timer = Callable[[Callable[[], object]], float]  # runs fn, returns milliseconds (median)
# Bench-time sanity tolerance by dtype (the test suite has its own table in tests/tolerances.py).
CHECK_TOL = {torch.bfloat16: 1.6e-2, torch.float16: 2e-3, torch.float32: 1e-5}
TARGETS = {"decode": 0.80, "transfer": 0.85}  # fraction of the measured copy bandwidth


def _gbps(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def cuda_timer(fn: Callable[[], object]) -> float:
    """Median milliseconds from triton.testing.do_bench (warm-up, L2 flush, CUDA events)."""
    from triton.testing import do_bench  # only on the GPU path
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def cpu_timer(fn: Callable[[], object], reps: int = 3) -> float:
    """Median wall milliseconds; the dry run's stand-in for do_bench."""
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def copy_bandwidths(nbytes: int, device: torch.device, timer: Timer) -> dict[str, float]:
    """D2D (bytes read + written) and pinned H2D / D2H GB/s for `nbytes` buffers."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
    d2d = timer(lambda: dst.copy_(src))
    h2d = timer(lambda: dst.copy_(host, non_blocking=True))
    d2h = timer(lambda: host.copy_(src, non_blocking=True))
    return {"bytes": nbytes, "d2d_gbps": _gbps(2 * nbytes, d2d), "h2d_gbps": _gbps(nbytes, h2d),
            "d2h_gbps": _gbps(nbytes, d2h)}


def _assert_close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    tol = CHECK_TOL[want.dtype]
    try:
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    except AssertionError as err:
        raise AssertionError(f"{name}: result differs from the reference, not timing it\n{err}") from err


def bench_decode(case: DecodeCase, device: torch.device, timer: Timer,
                 d2d_gbps: float) -> dict[str, Any]:
    """Check, then time the Triton kernel and the gather+SDPA baseline at one shape."""
    from kvtier.kernels.paged_attention import paged_decode_attention
    from kvtier.kernels.reference import paged_decode_attention_ref
    query, k_cache, v_cache, tables, lens = decode_inputs(case, device)
    scale = case.head_dim ** -0.5
    want = paged_decode_attention_ref(query, k_cache, v_cache, tables, lens, scale)
    _assert_close(case.name, paged_decode_attention(query, k_cache, v_cache, tables, lens, scale), want)
    _assert_close(case.name + " baseline",
                  torch_decode_baseline(query, k_cache, v_cache, tables, case.context, scale), want)
    kernel_ms = timer(lambda: paged_decode_attention(query, k_cache, v_cache, tables, lens, scale))
    base_ms = timer(lambda: torch_decode_baseline(query, k_cache, v_cache, tables, case.context, scale))
    gbps = _gbps(case.bytes_moved, kernel_ms)
    return {"name": case.name, "batch": case.batch, "context": case.context,
            "bytes": case.bytes_moved, "kernel_ms": kernel_ms, "kernel_gbps": gbps,
            "fraction_of_d2d": gbps / d2d_gbps, "baseline_ms": base_ms,
            "baseline_gbps": _gbps(case.bytes_moved, base_ms), "target": TARGETS["decode"]}


def decode_tunings(dry_run: bool) -> list[Any]:
    """The launch variants the sweep tries: tile length x warps x pipeline stages x occupancy."""
    from kvtier.kernels._attention_args import DecodeTuning
    if dry_run:  # the interpreter ignores warps and stages; two variants prove the plumbing
        return [DecodeTuning(block_n=16), DecodeTuning(block_n=32)]
    grid = itertools.product((32, 64, 128), (4, 8), (3, 4), (2, 4, 8))
    return [DecodeTuning(block_n=n, num_warps=w, num_stages=st, programs_per_sm=p)
            for n, w, st, p in grid]


def sweep_decode(case: DecodeCase, device: torch.device, timer: Timer, d2d_gbps: float,
                 tunings: list[Any]) -> list[dict[str, Any]]:
    """Check, then time, each launch variant on fresh random inputs (a stale output cannot pass).

    A variant the compiler rejects (too much shared memory, say) is recorded with its error.
    """
    from kvtier.kernels.paged_attention import paged_decode_attention
    from kvtier.kernels.reference import paged_decode_attention_ref
    scale = case.head_dim ** -0.5
    rows: list[dict[str, Any]] = []
    for seed, tuning in enumerate(tunings, start=1):
        row: dict[str, Any] = {"name": case.name, "block_n": tuning.block_n,
                               "num_warps": tuning.num_warps, "num_stages": tuning.num_stages,
                               "programs_per_sm": tuning.programs_per_sm}
        query, k_cache, v_cache, tables, lens = decode_inputs(case, device, seed=seed)
        run = functools.partial(paged_decode_attention, query, k_cache, v_cache, tables, lens, scale,
                                tuning=tuning)
        try:
            _assert_close(f"{case.name} {tuning}", run(),
                          paged_decode_attention_ref(query, k_cache, v_cache, tables, lens, scale))
            row["kernel_ms"] = timer(run)
        except AssertionError as err:  # a wrong variant is a finding: recorded, never timed
            row["error"], row["wrong"] = str(err)[-300:], True
        except Exception as err:  # noqa: BLE001 - a variant that does not build is a result
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        else:
            row["kernel_gbps"] = _gbps(case.bytes_moved, row["kernel_ms"])
            row["fraction_of_d2d"] = row["kernel_gbps"] / d2d_gbps
        rows.append(row)
    return rows


def _transfer_buffers(case: TransferCase, device: torch.device) -> tuple[torch.Tensor, ...]:
    gen, layout = torch.Generator(device=device).manual_seed(0), case.layout
    pool_shape = (case.pool_blocks, *layout.block_shape)  # as DevicePool
    pool = torch.randn(pool_shape, generator=gen, device=device).to(layout.dtype)
    ids = torch.randperm(case.pool_blocks, generator=gen, device=device)[:case.num_blocks]
    staging = torch.empty((case.num_blocks, *layout.block_shape), dtype=layout.dtype, device=device)
    host = torch.empty(staging.shape, dtype=layout.dtype, pin_memory=device.type == "cuda")
    return pool, ids, staging, host


def bench_transfer(case: TransferCase, device: torch.device, timer: Timer,
                   bandwidth: dict[str, float]) -> dict[str, Any]:
    """gather_blocks + D2H and H2D + scatter_blocks, after checking both against references."""
    from kvtier.kernels.copy_blocks import gather_blocks, scatter_blocks
    from kvtier.kernels.reference import gather_blocks_ref
    pool, ids, staging, host = _transfer_buffers(case, device)
    want = gather_blocks_ref(pool, ids, torch.empty_like(staging))
    if not torch.equal(gather_blocks(pool, ids, staging), want):
        raise AssertionError(f"{case.name}: gather_blocks differs from the reference, not timing it")
    before = pool.clone()
    pool[ids] = 0
    if not torch.equal(scatter_blocks(staging, ids, pool), before):
        raise AssertionError(f"{case.name}: scatter_blocks did not restore the gathered blocks")
    out_ms = timer(lambda: host.copy_(gather_blocks(pool, ids, staging), non_blocking=True))
    in_ms = timer(lambda: scatter_blocks(staging.copy_(host, non_blocking=True), ids, pool))
    nbytes = case.num_blocks * case.layout.page_size_bytes
    out_gbps, in_gbps = _gbps(nbytes, out_ms), _gbps(nbytes, in_ms)
    return {"name": case.name, "page_size_bytes": case.layout.page_size_bytes, "bytes": nbytes,
            "offload_ms": out_ms, "offload_gbps": out_gbps,
            "offload_fraction_of_d2h": out_gbps / bandwidth["d2h_gbps"],
            "onload_ms": in_ms, "onload_gbps": in_gbps,
            "onload_fraction_of_h2d": in_gbps / bandwidth["h2d_gbps"], "target": TARGETS["transfer"]}
