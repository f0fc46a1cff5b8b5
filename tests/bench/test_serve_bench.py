"""`kvtier bench serve` on the tiny preset: AIPerf's metrics for tiering on and off, identical replies,
a JSONL workload, a request rate, the plot, and refused inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvtier.cli.main import main

SMALL = ["--model", "tiny", "--conversations", "3", "--turns", "3", "--system-tokens", "40", "--user-tokens", "12",
         "--reply-tokens", "4", "--concurrency", "2", "--device-blocks", "24", "--host-blocks", "8", "--block-size",
         "4"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["bench", "serve", *SMALL, "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_metrics_side_by_side_and_a_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    report = run(capsys, "--plot", str(tmp_path / "serve.png"))
    assert report["replies_match"] and set(report["results"]) == {"tiering_on", "tiering_off"}
    for result in report["results"].values():
        for metric in ("time_to_first_token", "inter_token_latency", "request_latency"):
            p50, p90, p99 = (result[f"{metric}_p{q}_ms"] for q in (50, 90, 99))
            assert 0 < p50 <= p90 <= p99
        assert result["requests"] == 9 and result["output_token_throughput"] > 0
    on, off = report["results"]["tiering_on"], report["results"]["tiering_off"]
    assert on["cached_tokens"] > off["cached_tokens"]  # history evicted from the pool came back from the tiers
    assert (tmp_path / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_jsonl_workload_at_a_request_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workload = tmp_path / "chats.jsonl"
    workload.write_text("\n".join(json.dumps({"turns": [list(range(1, 30)), [5, 6, 7]], "max_tokens": 3})
                                  for _ in range(2)) + "\n")
    report = run(capsys, "--workload", str(workload), "--request-rate", "50")
    assert report["replies_match"] and report["results"]["tiering_on"]["requests"] == 4


@pytest.mark.parametrize("line, message", [('{"turns": []}', "line 1: turns must be"), ("{nope", "line 1"),
                                           ('{"turns": [[1, 99999]]}', "token ids in")])
def test_bad_workload_lines_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str,
                                      message: str) -> None:
    workload = tmp_path / "bad.jsonl"
    workload.write_text(line + "\n")
    assert main(["bench", "serve", *SMALL, "--workload", str(workload)]) == 1
    assert message in capsys.readouterr().err


def test_a_request_the_pool_cannot_hold_is_an_error_not_a_hang(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "serve", *SMALL[:-6], "--device-blocks", "4", "--block-size", "4"]) == 1
    assert "cannot run" in capsys.readouterr().err
