"""Two engine processes at the same time on one shared tier (Redis, or a shared folder): the second hits
every full block of the first's prompts while the first keeps serving spill-heavy work on the same tier,
and every reply of both equals the reply computed with no tier at all."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvtier.cache import TieredKVCache
from kvtier.engine.engine import LLMEngine
from tests.engine.sharing_driver import BLOCK_SIZE, CONFIG, serve
from tests.tiers.remote.redis_server import redis_server  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[(11 * i + 3 * p) % 250 + 1 for i in range(22 + 3 * p)] for p in range(4)]
BUSY = [[(5 * i + 17 * p) % 250 + 1 for i in range(30 + 2 * p)] for p in range(6)]
MAX_TOKENS = 6


def reference(prompts: list[list[int]]) -> list[list[int]]:
    from kvtier.model.weights import random_model

    engine = LLMEngine(random_model(CONFIG, seed=0), TieredKVCache(CONFIG.kv_layout(BLOCK_SIZE), 512))
    return [r["tokens"] for r in serve(engine, prompts, MAX_TOKENS, "ref")]


def driver(spec: dict[str, Any], work: Path, name: str) -> tuple[list[str], Path]:
    (work / f"{name}.spec.json").write_text(json.dumps(spec))
    return [sys.executable, "-m", "tests.engine.sharing_driver", str(work / f"{name}.spec.json"),
            str(work / f"{name}.out.json")], work / f"{name}.out.json"


@pytest.mark.parametrize("kind", ["remote", "shared"])
def test_two_engines_at_once_share_blocks_and_reply_as_without_a_tier(kind: str, request: pytest.FixtureRequest,
                                                                     tmp_path: Path) -> None:
    tier = {"remote": request.getfixturevalue("redis_server").url} if kind == "remote" \
        else {"shared": str(tmp_path / "shared")}
    ready, hold = tmp_path / "writer.ready", tmp_path / "writer.hold"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer_cmd, writer_out = driver({"tier": tier, "prompts": PROMPTS, "busy": BUSY, "max_tokens": MAX_TOKENS,
                                     "ready": str(ready), "hold": str(hold)}, tmp_path, "writer")
    reader_cmd, reader_out = driver({"tier": tier, "prompts": PROMPTS, "busy": BUSY, "max_tokens": MAX_TOKENS,
                                     "wait_for": str(ready)}, tmp_path, "reader")
    writer_err = tmp_path / "writer.err"
    with writer_err.open("w") as err:  # the child keeps its own copy of the descriptor
        writer = subprocess.Popen(writer_cmd, cwd=ROOT, env=env, stderr=err)
    try:
        done = subprocess.run(reader_cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert writer.poll() is None  # NOTE: the writer was still serving `busy` through the whole read
    finally:
        hold.write_text("go\n")
        writer.wait(timeout=300)
    assert writer.returncode == 0, writer_err.read_text()[-3000:]
    wrote, read = json.loads(writer_out.read_text()), json.loads(reader_out.read_text())
    expected = reference(PROMPTS)
    assert [r["tokens"] for r in wrote["prompts"]] == [r["tokens"] for r in read["prompts"]] == expected
    assert [r["cached"] for r in wrote["prompts"]] == [0] * len(PROMPTS)
    assert [r["cached"] for r in read["prompts"]] == [(len(p) - 1) // BLOCK_SIZE * BLOCK_SIZE for p in PROMPTS]
    busy = reference(BUSY)
    assert len(wrote["busy"]) >= 1 and len(read["busy"]) == 1
    for one_pass in wrote["busy"] + read["busy"]:
        assert [r["tokens"] for r in one_pass] == busy
