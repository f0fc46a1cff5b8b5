"""benches/gpu_check.py --dry-run builds its inputs, checks them against the references, reports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benches.gpu import measure
from benches.gpu.cases import DecodeCase, decode_inputs, torch_decode_baseline
from benches.gpu.measure import cpu_timer
from kvtier.kernels.reference import paged_decode_attention_ref
from tests.kernels.paged_inputs import INTERPRETING
from tests.tolerances import tol

REPO = Path(__file__).resolve().parents[2]
CASE = DecodeCase(name="tiny", batch=2, context=19, num_heads=4, num_kv_heads=2, head_dim=64,
                  block_size=16, dtype=torch.float32)


def test_torch_baseline_agrees_with_the_reference():
    query, k_cache, v_cache, tables, lens = decode_inputs(CASE, torch.device("cpu"))
    torch.testing.assert_close(torch_decode_baseline(query, k_cache, v_cache, tables, 19, 0.125),
                               paged_decode_attention_ref(query, k_cache, v_cache, tables, lens, 0.125),
                               **tol(torch.float32))


@pytest.mark.skipif(not INTERPRETING, reason="the dry run times Triton code on CPU")
def test_bench_decode_refuses_to_time_a_wrong_kernel(monkeypatch):
    monkeypatch.setattr("kvtier.kernels.paged_attention.paged_decode_attention",
                        lambda q, *args: torch.zeros_like(q))
    with pytest.raises(AssertionError, match="tiny: result differs from the reference"):
        measure.bench_decode(CASE, torch.device("cpu"), cpu_timer, d2d_gbps=1.0)


def test_dry_run_writes_json_and_prints_the_table_last(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(REPO / "benches" / "gpu_check.py"), "--dry-run",
                           "--skip-tests", "--out", str(out)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and len(report["env"]["kernels_sha256"]) == 16
    assert [d["batch"] for d in report["decode"]] == [3, 1]
    assert all(d["kernel_ms"] > 0 and d["baseline_ms"] > 0 for d in report["decode"])
    assert report["transfer"][0]["bytes"] == 3 * report["transfer"][0]["page_size_bytes"]
    step = report["model_step"]
    assert step["step_ms"] > 0 and step["kv_bytes"] == 2 * 40 * 2 * 2 * 2 * 16 * 4  # b2, ctx40, tiny, float32
    assert 0 < step["fraction_of_roofline"] and step["roofline_ms"] > 0
    assert done.stdout.rstrip().splitlines()[-1].startswith("tiny decode step b2 ctx40")


def test_kernels_digest_names_the_sources_on_disk(tmp_path):
    from benches.gpu.check import kernels_digest
    (tmp_path / "kvtier" / "kernels").mkdir(parents=True)
    source = tmp_path / "kvtier" / "kernels" / "paged.py"
    source.write_text("BLOCK = 64\n")
    before = kernels_digest(tmp_path)
    source.write_text("BLOCK = 32\n")
    assert kernels_digest(tmp_path) != before and len(before) == 16
    assert kernels_digest(REPO) == kernels_digest(REPO)
