"""kvtier.ops: the fast torch twins on CPU, the kernels on CUDA, and no triton import on the CPU path."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kvtier import ops
from kvtier.kernels import cpu, reference
from tests.kernels.paged_inputs import HAS_CUDA, make_paged_cache, randn
from tests.tolerances import tol


def test_importing_kvtier_and_using_ops_on_cpu_never_imports_triton():
    code = ("import sys, torch, kvtier, kvtier.ops as ops, kvtier.kernels\n"
            "c = torch.zeros(2, 1, 16, 64); k = torch.ones(1, 1, 64)\n"
            "ops.store_kv(k, k, c, c, torch.tensor([3]))\n"
            "assert c[0, 0, 3].eq(1).all()\n"
            "print('triton' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            check=True)
    assert result.stdout.strip() == "False"


def test_cpu_tensors_run_the_fast_twin_which_matches_the_reference():
    assert not ops.uses_triton(torch.zeros(1))
    paged = make_paged_cache([5, 17], 16, 2, 64, torch.float32, "cpu")
    query = randn((2, 4, 64), torch.float32, "cpu", seed=0)
    args = (query, paged.k_cache, paged.v_cache, paged.block_tables, paged.seq_lens, 0.125)
    assert torch.equal(ops.paged_decode_attention(*args), cpu.paged_decode_attention_cpu(*args))
    torch.testing.assert_close(ops.paged_decode_attention(*args), reference.paged_decode_attention_ref(*args),
                               **tol(torch.float32))


def test_prefill_reference_of_last_token_equals_decode_reference():
    paged = make_paged_cache([9, 33], 16, 1, 64, torch.float32, "cpu")
    query = randn((2, 2, 64), torch.float32, "cpu", seed=1)
    starts = torch.tensor([0, 1, 2], dtype=torch.int32)
    prefill = ops.paged_prefill_attention(query, paged.k_cache, paged.v_cache, paged.block_tables,
                                          starts, paged.seq_lens, 0.125)
    decode = ops.paged_decode_attention(query, paged.k_cache, paged.v_cache, paged.block_tables,
                                        paged.seq_lens, 0.125)
    torch.testing.assert_close(prefill, decode, **tol(torch.float32))


def test_reference_matches_sdpa_on_a_contiguous_cache():
    k = randn((20, 2, 64), torch.float32, "cpu", seed=2)  # [seq_len, num_kv_heads, head_dim]
    v = randn((20, 2, 64), torch.float32, "cpu", seed=3)
    q = randn((1, 4, 64), torch.float32, "cpu", seed=4)
    # [blocks, heads, block_size, dim], built by hand: token t is block t // 16, offset t % 16
    k_cache = torch.cat([k, torch.zeros(12, 2, 64)]).view(2, 16, 2, 64).transpose(1, 2).contiguous()
    v_cache = torch.cat([v, torch.zeros(12, 2, 64)]).view(2, 16, 2, 64).transpose(1, 2).contiguous()
    table = torch.tensor([[0, 1]], dtype=torch.int32)
    out = reference.paged_decode_attention_ref(q, k_cache, v_cache, table,
                                               torch.tensor([20], dtype=torch.int32), 0.125)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.repeat_interleave(2, 1).transpose(0, 1),
        v.repeat_interleave(2, 1).transpose(0, 1), scale=0.125).transpose(0, 1)
    torch.testing.assert_close(out, expected, **tol(torch.float32))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")
def test_cuda_tensors_run_the_triton_kernels():
    assert ops.uses_triton(torch.zeros(1, device="cuda"))
    paged = make_paged_cache([5, 17], 16, 2, 64, torch.bfloat16, "cuda")
    query = randn((2, 4, 64), torch.bfloat16, "cuda", seed=0)
    args = (query, paged.k_cache, paged.v_cache, paged.block_tables, paged.seq_lens, 0.125)
    torch.testing.assert_close(ops.paged_decode_attention(*args),
                               reference.paged_decode_attention_ref(*args), **tol(torch.bfloat16))
    assert "kvtier.kernels.paged_attention" in sys.modules


@pytest.mark.parametrize("rows", [0, 1, 2, 8, 129])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_on_a_packed_weight_matches_functional_linear(rows, has_bias, dtype):
    x, weight = randn((rows, 96), dtype, "cpu", seed=5), randn((40, 96), dtype, "cpu", seed=6)
    bias = randn((40,), dtype, "cpu", seed=7) if has_bias else None
    packed = ops.pack_linear_weight(weight)
    # NOTE: torch's CPU wheels ship oneDNN; its bf16 path needs AVX-512 or AVX-NE-CONVERT (else: torch's linear)
    assert (packed is not None) == (dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    out = ops.linear(x, weight, bias, packed)
    assert out.shape == (rows, 40) and out.dtype == dtype
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight, bias), **tol(dtype))


def test_linear_on_a_packed_weight_takes_strided_and_batched_inputs():
    weight = randn((40, 96), torch.float32, "cpu", seed=6)
    packed = ops.pack_linear_weight(weight)
    for x in (randn((96, 5), torch.float32, "cpu", seed=1).t(), randn((2, 3, 96), torch.float32, "cpu", seed=2)):
        torch.testing.assert_close(ops.linear(x, weight, None, packed), torch.nn.functional.linear(x, weight),
                                   **tol(torch.float32))


def test_a_weight_oneDNN_cannot_take_is_not_packed():
    assert ops.pack_linear_weight(torch.zeros(4, 8, dtype=torch.float64)) is None
    assert ops.pack_linear_weight(torch.zeros(2, 4, 8)) is None
