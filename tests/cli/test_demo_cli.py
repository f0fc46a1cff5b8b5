"""`kvtier demo`: the chat on the tiered cache across a restart, replies checked against an
all-resident run (tiny preset here; the real model in the real_model test), and the CLI's entry."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvtier.cli.main import main

SMALL = ["--document-tokens", "150", "--reply-tokens", "6", "--block-size", "8"]


def demo_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["demo", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_tiny_chat_spills_restarts_and_matches_the_resident_run(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    report = demo_json(capsys, "--model", "tiny", *SMALL, "--disk", str(tmp_path), "--host-blocks", "4",
                       "--device-blocks", "28")  # round 1 holds 27, round 2 needs 28: blocks spill
    turns: list[dict] = report["turns"]  # type: ignore[assignment]
    assert report["outputs_match"] is True and report["model"] == "tiny" and len(turns) == 4
    assert [t["after_restart"] for t in turns] == [False, False, True, True]
    assert turns[0]["cached_tokens"] == 0 and turns[0]["recompute_ttft_s"] is None
    assert turns[1]["cached_blocks_by_tier"] == {"device": 150 // 8}  # the shared prefix, on the device
    restored, computed = turns[2], turns[0]["prompt_tokens"] + len(turns[0]["reply_token_ids"]) - 1
    assert restored["cached_blocks_by_tier"] == {"disk": computed // 8}  # all its history, from disk
    assert report["restore_s"] == restored["onload_s"] and report["restore_floor_s"] == restored["floor_s"]
    assert report["restore_s"] > 0 and report["restore_floor_s"] > 0 and report["restored_tokens"] > 150
    assert turns[3]["cached_blocks_by_tier"].get("disk", 0) > 0  # its own first turn, from disk
    assert all(t["recompute_ttft_s"] > 0 for t in turns[1:]) and report["speedup"] > 0
    assert sum(t["offloaded_bytes"] for t in turns) > 0 and any(tmp_path.rglob("*.kvb"))


@pytest.mark.parametrize("layout", [["--tp", "2"], ["--pp", "2"]])
def test_the_demo_split_over_ranks_serves_one_processs_replies_and_hits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: list[str]) -> None:
    flags = ["--model", "tiny", *SMALL, "--host-blocks", "4", "--device-blocks", "28"]
    one = demo_json(capsys, *flags, "--disk", str(tmp_path / "one"))
    ranks = demo_json(capsys, *flags, "--disk", str(tmp_path / "ranks"), *layout)
    expected_layout = {"tp": 2, "pp": 1} if layout[0] == "--tp" else {"tp": 1, "pp": 2}
    assert ranks["outputs_match"] is True and ranks["parallel"] == expected_layout
    turns: list[dict] = ranks["turns"]  # type: ignore[assignment]
    one_turns: list[dict] = one["turns"]  # type: ignore[assignment]
    assert [t["reply_token_ids"] for t in turns] == [t["reply_token_ids"] for t in one_turns]
    assert [t["cached_blocks_by_tier"] for t in turns] == [t["cached_blocks_by_tier"] for t in one_turns]
    assert any((tmp_path / "ranks" / "shards").rglob("*.kvb"))  # each rank's shard, in its own folder


def test_text_report_and_a_bad_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", "tiny", *SMALL, "--turns", "1"]) == 0
    out = capsys.readouterr().out
    assert "conversation 2, turn 1" in out and "replies equal the all-resident run's: True" in out
    assert "after the restart" not in out  # one round: no restart
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--model", "tiny", "--turns", "9"])
    assert exited.value.code == 2 and "questions for" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.real_model
def test_the_real_model_chats_and_its_history_comes_back(smollm2_folder: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    report = demo_json(capsys, "--model", str(smollm2_folder), "--document-tokens", "192", "--reply-tokens", "12")
    turns: list[dict] = report["turns"]  # type: ignore[assignment]
    assert report["outputs_match"] is True and all(t["reply"].strip() for t in turns)
    second = turns[2]  # conversation 1, turn 2: its prompt continues turn 1 token for token
    assert second["cached_tokens"] >= turns[0]["prompt_tokens"] + len(turns[0]["reply_token_ids"]) - 16


def test_module_entry_point_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "kvtier", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("demo", "generate", "info", "bench", "cache"):
        assert command in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: kvtier" in capsys.readouterr().out
