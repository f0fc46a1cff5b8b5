"""fio as the storage bench's ceiling: its job text, its JSON from a real run, its report rows, the fallback."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvtier.bench.fio import FioJob, direct_refusal, parse_output, run_job, split_names
from kvtier.bench.report import format_table
from kvtier.bench.storage import run_storage_bench
from tests.bench.test_bench_storage import BLOCK_BYTES, MemoryStore, short_config

needs_fio = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (apt-get install fio)")


def test_job_text_has_one_section_per_thread_and_the_fsync_promise(tmp_path: Path) -> None:
    job = FioJob(kind="write", folder=tmp_path / "a:b", object_bytes=BLOCK_BYTES, direct=True, fsync=True,
                 names=[["ab/0", "cd/2"], [], ["ef/1"]])
    text = job.text()
    assert f"directory={tmp_path}/a\\:b\n" in text  # fio splits at ':' unless escaped
    for line in (f"bs={BLOCK_BYTES}", f"filesize={BLOCK_BYTES}", "direct=1", "fsync_on_close=1", "thread=1",
                 "ioengine=psync", "openfiles=1", "create_on_open=1", "invalidate=0", "filename=ab/0:cd/2",
                 "filename=ef/1"):
        assert f"\n{line}\n" in text, line
    assert text.count("[write") == 2  # the empty thread gets no section
    assert "fsync_on_close=0" in FioJob(kind="read", folder=tmp_path, object_bytes=4096, direct=False, fsync=False,
                                        names=[["x"]]).text()


def test_split_names_keeps_order_and_fits_each_list() -> None:
    names = [[f"{i:04d}" for i in range(30)], [f"{i:03d}" for i in range(7)]]
    chunks = split_names(names, max_chars=50)
    assert all(len(":".join(t)) < 50 for chunk in chunks for t in chunk)
    assert [sum((c[t] for c in chunks), []) for t in range(2)] == names
    assert split_names([[], []]) == []


def test_direct_refusal_names_unaligned_sizes(tmp_path: Path) -> None:
    assert "not a multiple of 4096" in (direct_refusal(tmp_path, 64 * 1000) or "")
    assert list(tmp_path.iterdir()) == []


@needs_fio
def test_parser_reads_a_real_fio_run(tmp_path: Path) -> None:
    binary = shutil.which("fio")
    assert binary is not None
    (tmp_path / "ab").mkdir()
    names = [["ab/0", "ab/1", "ab/2"], ["ab/3", "ab/4"]]
    write = run_job(binary, FioJob(kind="write", folder=tmp_path, object_bytes=BLOCK_BYTES, direct=False,
                                   fsync=True, names=names))
    assert (write.kind, write.ops, write.bytes_moved) == ("write", 5, 5 * BLOCK_BYTES)
    assert sorted(p.stat().st_size for p in (tmp_path / "ab").iterdir()) == [BLOCK_BYTES] * 5
    assert write.runtime_s > 0 and write.bw_bytes > 0 and write.iops > 0
    assert len(write.latencies_s()) == 5 and all(s > 0 for s in write.latencies_s())
    assert {"50.000000", "90.000000", "99.000000"} <= set(write.clat_percentiles_ms)
    again = [["ab/0", "ab/0", "ab/4"], ["ab/1"]]  # a block read twice is two reads, as in the trace
    read = run_job(binary, FioJob(kind="read", folder=tmp_path, object_bytes=BLOCK_BYTES, direct=False,
                                  fsync=False, names=again))
    assert (read.ops, read.bytes_moved) == (4, 4 * BLOCK_BYTES)


def test_parser_refuses_failed_or_foreign_output() -> None:
    with pytest.raises(ValueError, match="0 job groups"):
        parse_output("fio: no jobs\n", "read")
    with pytest.raises(ValueError, match="failed with error 5"):
        parse_output('{"jobs": [{"jobname": "read0", "error": 5}]}', "read")


@needs_fio
def test_report_has_fio_rows_from_the_same_rounds(tmp_path: Path) -> None:
    report = run_storage_bench(short_config(tmp_path, fio=True, rounds=2, duration_s=0.06), MemoryStore)
    assert report["fio"]["modes"] == ["buffered", "direct"] and report["fio"]["version"].startswith("fio-")
    for side in ("fio_buffered_", "fio_direct_"):
        assert report[f"{side}write_ops"] == report["write_ops"] > 0
        assert report[f"{side}read_ops"] == report["read_ops"] > 0
        assert report[f"{side}write_gbps"] > 0 and report[f"{side}read_p99_ms"] > 0
        assert f"{side}mixed_read_gbps" not in report  # the mixed phase is tier and python only
    for phase in ("write", "read"):
        ceiling = report[f"{phase}_ceiling"]
        assert ceiling in ("fio_buffered", "fio_direct")
        assert report[f"{phase}_ratio"] == pytest.approx(report[f"{phase}_gbps"] / report[f"{ceiling}_{phase}_gbps"])
        assert report[f"{phase}_python_ratio"] > 0
    io = report["block_io"]
    if io["device"] is not None:  # a folder on a block device: every side's writes were counted
        assert all(io[side]["write"]["write_bytes_per_op"] is not None for side in ("python", "fio_direct"))
    table = format_table(report)
    assert "fio buf" in table and "fio direct" in table and "tier/ceil" in table and "disk wr/op" in table
    assert list(tmp_path.iterdir()) == []  # fio's files went with the run's folder


def test_without_fio_the_bench_warns_and_falls_back_to_python(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kvtier.bench.fio.shutil.which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="apt-get install fio"):
        report = run_storage_bench(short_config(tmp_path, fio=True, rounds=2), MemoryStore)
    assert report["fio"]["modes"] == [] and "fio_buffered_write_gbps" not in report
    assert report["write_ceiling"] == report["read_ceiling"] == "python" and report["write_ratio"] > 0
    assert "fio not found on PATH (apt-get install fio); the ceiling is python" in format_table(report)
