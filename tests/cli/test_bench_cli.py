"""`kvtier bench`: argument errors are clear, a short storage run prints one JSON object, codec runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kvtier.cli.main import main


def fails_with(capsys: pytest.CaptureFixture[str], argv: list[str], text: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert text in capsys.readouterr().err


def test_bench_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    fails_with(capsys, ["bench"], "BENCH")


@pytest.mark.parametrize("extra, text", [
    (["--block-bytes", "1000"], "--block-bytes 1000 is not a multiple of 64"),
    (["--block-bytes", "0"], "must be >= 1"),
    (["--block-bytes", "65536", "--model-preset", "tiny"], "not allowed with argument"),
    (["--model-preset", "gpt-5"], "invalid choice: 'gpt-5'"),
    (["--read-ratio", "1.5"], "read_ratio must be in [0, 1]"),
    (["--concurrency", "0"], "concurrency must be >= 1"),
    (["--duration", "0"], "duration_s must be > 0"),
    (["--codec", "lz4"], "invalid choice: 'lz4'"),
    (["--calibrate", "--api", "async"], "calibrate runs plain files against plain files"),
])
def test_storage_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       extra: list[str], text: str) -> None:
    fails_with(capsys, ["bench", "storage", "--path", str(tmp_path), *extra], text)
    assert list(tmp_path.iterdir()) == []


def test_storage_rejects_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails_with(capsys, ["bench", "storage", "--path", str(tmp_path / "nope")], "is not an existing folder")


def test_storage_json_run_prints_one_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("kvtier.tiers.disk")
    argv = ["bench", "storage", "--path", str(tmp_path), "--block-bytes", str(64 << 10), "--duration", "0.4",
            "--concurrency", "2", "--max-bytes", str(32 << 20), "--no-fsync", "--json", "--rounds", "4"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("write_gbps", "read_gbps", "raw_write_gbps", "raw_read_gbps", "write_ratio", "read_ratio"):
        assert report[key] > 0, key
    assert report["misses"] == 0 and report["config"]["fsync"] is False
    if shutil.which("fio"):  # NOTE: fio is the ceiling where it is installed (CI installs it)
        assert report["write_ceiling"].startswith("fio_") and report["read_ceiling"].startswith("fio_")


def test_codec_reports_ratio_and_speed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "codec", "--model-preset", "tiny", "--repeat", "1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["codec"], r["dtype"]) for r in rows} == {(c, d) for c in ("raw", "zstd")
                                                        for d in ("float16", "bfloat16")}
    assert all(r["ratio"] > 0 and r["encode_gbps"] > 0 and r["decode_gbps"] > 0 for r in rows)


def test_keep_leaves_objects_that_cache_verify_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("kvtier.tiers.disk")
    argv = ["bench", "storage", "--path", str(tmp_path), "--block-bytes", str(64 << 10), "--duration", "0.4",
            "--concurrency", "2", "--max-bytes", str(16 << 20), "--no-fsync", "--keep", "--read-ratio", "0.5",
            "--no-fio"]  # NOTE: fio's own runs are covered by the JSON run above and tests/bench
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "write GB/s" in table and "objects kept in" in table
    (kept,) = tmp_path.iterdir()
    assert main(["cache", "verify", str(kept), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["objects"] > 0 and verdict["corrupt"] == 0 and verdict["ok"] == verdict["objects"]


def test_calibrate_runs_plain_files_on_both_sides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "storage", "--path", str(tmp_path), "--block-bytes", str(64 << 10), "--duration", "0.4",
            "--concurrency", "2", "--max-bytes", str(16 << 20), "--no-fsync", "--calibrate", "--keep",
            "--no-fio"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "--calibrate (plain files on both sides)" in table and "ratio per round" in table
    (kept,) = tmp_path.iterdir()
    files = list(kept.glob("??/*.tier"))
    assert files and all(f.stat().st_size == 64 << 10 for f in files)  # headerless: not DiskStore objects
    assert list(kept.glob("??/*.raw")) == []
