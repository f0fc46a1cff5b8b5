"""`kvtier bench parallel` on the tiny preset: every layout serves the same replies, with history hits."""
from __future__ import annotations

import json

import pytest

from kvtier.bench.parallel import ParallelBenchConfig, format_table, run_parallel_bench
from kvtier.cli.main import main


def test_every_layout_serves_the_same_chats_and_the_fastest_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "parallel", "--model", "tiny", "--conversations", "2", "--turns", "2",
                 "--system-tokens", "40", "--reply-tokens", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["replies_match"] and [r["layout"] for r in report["layouts"]] == ["tp1", "tp2", "pp2", "dp2"]
    by_layout = {r["layout"]: r for r in report["layouts"]}
    assert all(r["cached_tokens"] > 0 and r["output_tokens_per_s"] > 0 for r in report["layouts"])  # turn 2's history
    assert by_layout["tp2"]["cached_tokens"] == by_layout["tp1"]["cached_tokens"]
    assert report["best"] in by_layout and report["conclusion"].startswith(f"{report['best']} served best")
    assert "replies identical across layouts" in format_table(report)


def test_a_layout_it_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown layouts \\['tp3'\\]"):
        run_parallel_bench(ParallelBenchConfig(model="tiny", layouts=("tp1", "tp3")))
