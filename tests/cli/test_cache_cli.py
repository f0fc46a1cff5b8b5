"""`kvtier cache stat|verify|gc` on real disk-tier folders."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kvtier.cli.main import main
from kvtier.config.parse import parse_bytes
from tests.tiers.disk_support import (
    make_block,
    make_key,
    object_bytes,
    object_files,
    open_store,
)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(["cache", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def fill(root: Path, count: int, namespace: bytes | None = None) -> None:
    store = open_store(root)
    for i in range(count):
        key = make_key(i) if namespace is None else make_key(i, namespace=namespace)  # type: ignore[arg-type]
        store.put(key, make_block(i))


def test_stat_counts_objects_and_bytes_per_namespace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path, 3)
    fill(tmp_path, 2, namespace=b"\x07" * 32)
    code, report = run_json(capsys, "stat", str(tmp_path))
    assert code == 0 and report["objects"] == 5 and report["bytes"] == 5 * object_bytes()
    namespaces = report["namespaces"]
    assert isinstance(namespaces, dict)
    assert namespaces[("07" * 32)] == {"objects": 2, "bytes": 2 * object_bytes()}
    assert namespaces[make_key(0).namespace.hex()] == {"objects": 3, "bytes": 3 * object_bytes()}


def test_verify_reports_corrupt_and_foreign_files_and_repairs(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path, 4)
    files = object_files(tmp_path)
    data = bytearray(files[0].read_bytes())
    data[-1] ^= 1
    files[0].write_bytes(bytes(data))
    (files[1].parent / ("ab" * 32 + ".kvb")).write_bytes(b"not a block")  # foreign, named like one
    moved = files[2].parent.parent / "00"
    moved.mkdir(exist_ok=True)
    os.rename(files[2], moved / files[2].name)  # a valid object in the wrong folder
    code, report = run_json(capsys, "verify", str(tmp_path))
    assert code == 1 and (report["objects"], report["ok"], report["corrupt"]) == (5, 2, 3)
    assert str(files[0]) in report["corrupt_paths"]  # type: ignore[operator]
    code, report = run_json(capsys, "verify", str(tmp_path), "--repair")
    assert code == 0 and report["repaired"] == 3
    assert len(list((tmp_path / "quarantine").iterdir())) == 3
    code, report = run_json(capsys, "verify", str(tmp_path))
    assert code == 0 and (report["objects"], report["ok"], report["corrupt"]) == (2, 2, 0)


def test_verify_needs_no_layout_and_checks_zstd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(tmp_path, codec="zstd")
    store.put(make_key(1), make_block(1))
    code, report = run_json(capsys, "verify", str(tmp_path))
    assert code == 0 and report["ok"] == 1


def test_gc_trims_to_budget_oldest_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path, 5)
    now = time.time()
    for age, path in enumerate(sorted(object_files(tmp_path))):
        os.utime(path, (now - 10 * age, now - 10 * age))
    newest_two = sorted(object_files(tmp_path))[:2]
    code, report = run_json(capsys, "gc", str(tmp_path), "--to", str(2 * object_bytes() + 10))
    assert code == 0 and report["removed"] == 3 and report["bytes"] == 2 * object_bytes()
    assert object_files(tmp_path) == newest_two


def test_plain_output_and_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path, 1)
    assert main(["cache", "stat", str(tmp_path)]) == 0
    assert "objects: 1" in capsys.readouterr().out
    assert main(["cache", "verify", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_parse_bytes_units() -> None:
    assert parse_bytes("1000") == 1000 and parse_bytes("512MiB") == 512 << 20 and parse_bytes("2G") == 2 * 10**9
    with pytest.raises(Exception, match="not a byte count"):
        parse_bytes("lots")


def test_stat_verify_and_gc_take_in_the_shard_folders_and_only_real_ones(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A TP/PP rank's objects live in ROOT/shards/layers-A-B.heads-C-D/ (a tier folder each): damage
    there fails verify, repair quarantines it there, gc's budget counts them; other names and links
    under shards/ are not shard folders."""
    shard = tmp_path / "shards" / "layers-0-2.heads-0-1"
    fill(tmp_path, 2)
    fill(shard, 3)
    fill(tmp_path / "shards" / "not-a-shard", 1)
    fill(tmp_path / "elsewhere", 1)
    os.symlink(tmp_path / "elsewhere", tmp_path / "shards" / "layers-0-2.heads-1-2")
    damaged = object_files(shard)[1]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 1
    damaged.write_bytes(bytes(data))
    code, report = run_json(capsys, "stat", str(tmp_path))
    assert code == 0 and report["objects"] == 2 and list(report["shards"]) == [shard.name]  # type: ignore[call-overload]
    assert report["shards"][shard.name]["objects"] == 3  # type: ignore[index]
    code, report = run_json(capsys, "verify", str(tmp_path))
    assert code == 1 and report["corrupt"] == 0 and report["shards"][shard.name]["corrupt"] == 1  # type: ignore[index]
    code, report = run_json(capsys, "verify", "--repair", str(tmp_path))
    assert code == 0 and report["shards"][shard.name]["repaired"] == 1  # type: ignore[index]
    assert not damaged.exists() and any((shard / "quarantine").iterdir())
    main(["cache", "verify", str(tmp_path)])
    assert f"shard {shard.name}:" in capsys.readouterr().out
    code, report = run_json(capsys, "gc", "--to", str(2 * object_bytes()), str(tmp_path))
    assert code == 0 and report["folders"] == 2 and report["bytes"] <= 2 * object_bytes()
    assert len(object_files(tmp_path)) + len(object_files(shard)) == 2 and report["quarantine_removed"] == 1
    assert len(object_files(tmp_path / "elsewhere")) == 1  # never through the link
    assert len(object_files(tmp_path / "shards" / "not-a-shard")) == 1  # not a shard folder's name
