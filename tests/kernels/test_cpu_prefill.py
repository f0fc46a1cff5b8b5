"""The CPU fast twin of paged prefill (torch SDPA, kernels/cpu.py) against its twin, the float32 reference, on the
seeded random batches of test_paged_random (lengths, chunks over cached prefixes, GQA, dtypes)."""
from __future__ import annotations

import pytest
import torch

from kvtier.kernels.cpu import paged_prefill_attention_cpu
from kvtier.kernels.reference import paged_prefill_attention_ref
from tests.kernels.paged_inputs import make_paged_cache, randn
from tests.kernels.test_paged_random import _config
from tests.tolerances import tol


@pytest.mark.parametrize("seed", range(12))
def test_sdpa_prefill_matches_the_reference(seed: int) -> None:
    cfg = _config(seed)
    dtype, head_dim = cfg["dtype"], cfg["head_dim"]
    paged = make_paged_cache(cfg["seq_lens"], cfg["block_size"], cfg["num_kv_heads"], head_dim, dtype, "cpu",
                             seed=seed)
    starts = torch.tensor([0, *cfg["new_tokens"]]).cumsum(0).to(torch.int32)
    query = randn((int(starts[-1]), cfg["num_heads"], head_dim), dtype, "cpu", seed + 1)
    args = (query, paged.k_cache, paged.v_cache, paged.block_tables, starts, paged.seq_lens, head_dim ** -0.5)
    torch.testing.assert_close(paged_prefill_attention_cpu(*args), paged_prefill_attention_ref(*args), **tol(dtype),
                               msg=lambda m: f"prefill {cfg}: {m}")


def test_more_new_tokens_than_the_sequence_is_refused() -> None:
    paged = make_paged_cache([4], 4, 1, 16, torch.float32, "cpu", seed=0)
    query = torch.zeros(5, 1, 16)
    with pytest.raises(ValueError, match="has 5 new tokens but seq_len 4"):
        paged_prefill_attention_cpu(query, paged.k_cache, paged.v_cache, paged.block_tables,
                                     torch.tensor([0, 5], dtype=torch.int32), paged.seq_lens, 0.25)
