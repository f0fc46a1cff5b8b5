"""kvtier's OffloadingSpec in vLLM's CPU build: same tokens as no connector, hits after vLLM forgets,
a later engine and a concurrent one hit the folder, damaged objects are misses and are counted."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from kvtier.cli.main import main as kvtier_main
from tests.integrations.vllm.conftest import BLOCK, finish, run_engine

pytestmark = pytest.mark.vllm

_rng = random.Random(7)
_P1 = [_rng.randrange(1, 512) for _ in range(3 * BLOCK + 20)]
PROMPTS = [
    _P1,
    _P1[:2 * BLOCK] + [_rng.randrange(1, 512) for _ in range(BLOCK + 22)],  # shares two blocks with the first
    [_rng.randrange(1, 512) for _ in range(BLOCK + 40)],
]


def spec(model: str, *, kvtier: dict | None, rounds: int = 1, **extra: object) -> dict:
    return {"model": model, "prompts": PROMPTS, "rounds": rounds, "max_tokens": 8, "kvtier": kvtier, **extra}


def options(folder: Path, stats: Path, kind: str = "disk") -> dict:
    return {"host_bytes": "8MiB", "tier": {"kind": kind, "path": str(folder), "capacity_bytes": "256MiB"},
            "stats_file": str(stats)}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm-plugin")


@pytest.fixture(scope="module")
def baseline(tiny_llama: str, work: Path) -> dict:
    return run_engine(spec(tiny_llama, kvtier=None, rounds=2), work, "baseline")


@pytest.fixture(scope="module")
def first(tiny_llama: str, work: Path) -> dict:
    return run_engine(spec(tiny_llama, kvtier=options(work / "folder", work / "first.stats"), rounds=2), work, "first")


def full_blocks(prompt: list[int]) -> int:
    return (len(prompt) - 1) // BLOCK * BLOCK  # vLLM never loads the block holding the last prompt token


def test_tokens_equal_no_connector_and_hits_after_reset(baseline: dict, first: dict) -> None:
    for rnd in range(2):
        assert first["rounds"][rnd]["tokens"] == baseline["rounds"][rnd]["tokens"]
    assert baseline["rounds"][0]["tokens"] == baseline["rounds"][1]["tokens"]
    # After reset_prefix_cache vLLM has nothing; every full block comes back through kvtier.
    assert first["rounds"][1]["cached"] == [full_blocks(p) for p in PROMPTS]
    assert baseline["rounds"][1]["cached"][0] == 0
    stats = first["stats"]
    assert stats["stores"] == 5  # distinct full blocks: 3 + 1 (the second shares two) + 1
    assert stats["host_hits"] >= stats["stores"]  # each came back from a host slot in round two
    assert stats["stores"] > 0 and stats["folder_writes"] == stats["stores"] and stats["folder_write_errors"] == 0


def test_later_engine_hits_the_folder(tiny_llama: str, work: Path, baseline: dict, first: dict) -> None:
    later = run_engine(spec(tiny_llama, kvtier=options(work / "folder", work / "later.stats")), work, "later")
    assert later["rounds"][0]["tokens"] == baseline["rounds"][0]["tokens"]
    assert later["rounds"][0]["cached"] == [full_blocks(p) for p in PROMPTS]
    assert later["stats"]["folder_reads"] == first["stats"]["stores"]  # every object, read once and verified
    assert later["stats"]["stores"] == 0


def test_another_salt_never_hits(tiny_llama: str, work: Path, baseline: dict, first: dict) -> None:
    """Invariant 5: the first engine wrote without a salt; a tenant with one finds none of it."""
    salted = {**options(work / "folder", work / "salted.stats"), "salt": "tenant-b"}
    other = run_engine(spec(tiny_llama, kvtier=salted), work, "salted")
    assert other["rounds"][0]["tokens"] == baseline["rounds"][0]["tokens"]
    assert other["rounds"][0]["cached"] == baseline["rounds"][0]["cached"]  # vLLM's own prefix hit only
    assert other["stats"]["folder_reads"] == other["stats"]["host_hits"] == 0
    assert other["stats"]["stores"] == first["stats"]["stores"]  # its own copies, under its own names


def test_objects_hold_the_models_k_and_v_in_kvtiers_layout(tiny_llama: str, work: Path, first: dict) -> None:
    """What vLLM's plug-in wrote is a kvtier block [L, 2, H, N, D]: it matches transformers' own K/V for
    the same checkpoint, block by block (so any kvtier reader may use it), and verifies."""
    import torch
    import transformers

    from kvtier.tiers.format.verify import decode_block

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    expected = []
    for prompt in PROMPTS:
        with torch.no_grad():
            cache = model(torch.tensor([prompt]), use_cache=True).past_key_values
        for b in range(len(prompt) // BLOCK):
            span = slice(b * BLOCK, (b + 1) * BLOCK)
            expected.append(torch.stack([torch.stack([layer.keys[0, :, span], layer.values[0, :, span]])
                                         for layer in cache.layers]))
    objects = sorted(p for p in (work / "folder").glob("[0-9a-f][0-9a-f]/*") if p.is_file())
    assert len(objects) >= first["stats"]["stores"] == 5  # (and the salted tenant's copies, when it ran first)
    for path in objects:
        header, block = decode_block(bytearray(path.read_bytes()))
        assert header.token_ids == () and tuple(block.shape) == tuple(expected[0].shape)
        errors = [float((block.float() - want).norm() / want.norm()) for want in expected]
        tolerance = 1e-3 if block.dtype == torch.float32 else 2e-2
        assert min(errors) < tolerance, (path.name, block.dtype, sorted(errors)[:2])


def _damage(folder: Path) -> int:
    """Flip a payload byte, truncate, or put another object's bytes at a name, round-robin; how many."""
    objects = sorted(p for p in folder.glob("[0-9a-f][0-9a-f]/*") if p.is_file())
    assert len(objects) >= 3
    contents = [p.read_bytes() for p in objects]
    for i, path in enumerate(objects):
        data = bytearray(contents[i])
        if i % 3 == 0:
            data[-17] ^= 0x40
        elif i % 3 == 1:
            data = data[:len(data) // 2]
        else:
            data = bytearray(contents[(i + 1) % len(objects)])
        path.write_bytes(bytes(data))
    return len(objects)


def test_damaged_objects_are_misses_and_counted(tiny_llama: str, work: Path, baseline: dict, first: dict,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = work / "damaged"
    shutil.copytree(work / "folder", folder)
    injected = _damage(folder)
    run = run_engine(spec(tiny_llama, kvtier=options(folder, work / "damaged.stats"), rounds=2), work, "damaged")
    for rnd in range(2):
        assert run["rounds"][rnd]["tokens"] == baseline["rounds"][rnd]["tokens"]
    detected = run["stats"]["folder_corrupt"]
    assert detected >= 1 and run["stats"]["folder_misses"] >= detected
    # What the engine did not read is still there, and `kvtier cache verify` finds exactly the rest.
    capsys.readouterr()
    kvtier_main(["cache", "verify", "--json", str(folder)])
    report = json.loads(capsys.readouterr().out)
    assert detected + report["corrupt"] + report["unreadable"] == injected


def test_concurrent_engine_on_a_shared_folder(tiny_llama: str, work: Path, baseline: dict) -> None:
    folder, ready, hold = work / "shared", work / "a.ready", work / "a.hold"
    writer = run_engine(spec(tiny_llama, kvtier=options(folder, work / "a.stats", "shared"), ready=str(ready),
                             hold=str(hold)), work, "writer", background=True)
    try:
        reader = run_engine(spec(tiny_llama, kvtier=options(folder, work / "b.stats", "shared"),
                                 wait_for=str(ready)), work, "reader")
    finally:
        hold.write_text("go\n")
    wrote = finish(*writer)
    assert reader["rounds"][0]["tokens"] == baseline["rounds"][0]["tokens"] == wrote["rounds"][0]["tokens"]
    assert reader["rounds"][0]["cached"] == [full_blocks(p) for p in PROMPTS]
    assert reader["stats"]["folder_reads"] == wrote["stats"]["stores"] > 0


def test_spec_refuses_what_it_does_not_serve() -> None:
    import os
    import subprocess

    from tests.integrations.vllm.conftest import ROOT, vllm_python

    done = subprocess.run([str(vllm_python()), "-m", "tests.integrations.vllm.spec_checks"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ok"] == "ok 16 slots"  # 1 MiB of 64 KiB blocks
    assert "runs one worker per engine; this engine has 2 (tp 2, pp 1)" in out["tp2"]
    assert "serves one KV cache group; this model has 2" in out["two_groups"]
    assert "one vLLM block per object" in out["chunks"] and "got 2 blocks of 128 tokens" in out["chunks"]
    assert "missing key 'capacity_bytes'" in out["bad_option"]
