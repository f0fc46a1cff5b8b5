"""`kvtier cache` on folders with hostile or unreadable entries: typed errors and exit codes, repair
that acts only on what it judged, a bounded quarantine, and the same link rules as the store."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from kvtier.cli.main import main
from tests.tiers.disk_support import (
    make_block,
    make_key,
    object_bytes,
    object_files,
    open_store,
    same_bits,
)

TIB = 1 << 40


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(["cache", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def fill(root: Path, count: int) -> None:
    store = open_store(root)
    for i in range(count):
        store.put(make_key(i), make_block(i))


def test_verify_repair_of_a_huge_sparse_file_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path, 3)
    huge = object_files(tmp_path)[0]
    os.truncate(huge, TIB)
    code, report = run_json(capsys, "verify", str(tmp_path))
    assert code == 1 and (report["ok"], report["corrupt"]) == (2, 1)
    code, report = run_json(capsys, "verify", str(tmp_path), "--repair")
    assert code == 0 and report["repaired"] == 1 and not huge.exists()


def _open_failing_for(name: str, error: int, monkeypatch: pytest.MonkeyPatch, before: object = None) -> None:
    """os.open of a path ending in `name` fails with `error` (after running `before`, once)."""
    real_open = os.open
    ran: list[bool] = []

    def fake_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if str(path).endswith(name):
            if before is not None and not ran:
                ran.append(True)
                before()  # type: ignore[operator]
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", fake_open)


@pytest.mark.parametrize("error", [errno.ENOENT, errno.EACCES, errno.EIO])
def test_unreadable_objects_are_reported_and_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    fill(tmp_path, 3)
    victim = object_files(tmp_path)[1]
    _open_failing_for(victim.name, error, monkeypatch)
    code, report = run_json(capsys, "verify", str(tmp_path), "--repair")
    monkeypatch.undo()
    assert code == 1 and (report["ok"], report["corrupt"], report["unreadable"]) == (2, 0, 1)
    assert report["repaired"] == 0 and victim.exists() and not (tmp_path / "quarantine").exists()


def test_repair_leaves_a_good_copy_published_after_the_old_file_vanished(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fill(tmp_path, 2)
    victim = object_files(tmp_path)[0]
    good = victim.read_bytes()

    def replaced_by_another_writer() -> None:  # the old file goes, a fresh good copy lands
        victim.unlink()
        victim.with_suffix(".tmp").write_bytes(good)
        os.rename(victim.with_suffix(".tmp"), victim)

    _open_failing_for(victim.name, errno.ENOENT, monkeypatch, before=replaced_by_another_writer)
    code, report = run_json(capsys, "verify", str(tmp_path), "--repair")
    monkeypatch.undo()
    assert report["corrupt"] == 0 and report["repaired"] == 0
    assert victim.read_bytes() == good and not (tmp_path / "quarantine").exists()


def test_quarantine_is_shown_and_trimmed_by_gc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path, 6)
    for path in object_files(tmp_path)[:3]:
        path.write_bytes(b"damaged")
    run_json(capsys, "verify", str(tmp_path), "--repair")
    code, report = run_json(capsys, "stat", str(tmp_path))
    assert code == 0 and report["objects"] == 3
    assert (report["quarantine_files"], report["quarantine_bytes"]) == (3, 3 * len(b"damaged"))
    code, report = run_json(capsys, "gc", str(tmp_path), "--to", str(3 * object_bytes()))
    assert code == 0 and report["removed"] == 0 and report["quarantine_removed"] == 3
    assert list((tmp_path / "quarantine").iterdir()) == [] and len(object_files(tmp_path)) == 3


def test_crafted_names_and_links_are_ignored_as_the_store_ignores_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path / "other", 1)
    fill(tmp_path / "tier", 2)
    digest = make_key(50).block_hash.hex()
    leaf = tmp_path / "tier" / digest[:2]
    (leaf / f"{digest[:2]} {digest[2:62]} .kvb").write_bytes(b"x" * 100)
    (leaf / f"{digest}.kvb").symlink_to(object_files(tmp_path / "other")[0])
    code, report = run_json(capsys, "stat", str(tmp_path / "tier"))
    assert code == 0 and (report["objects"], report["ignored"]) == (2, 2)
    code, report = run_json(capsys, "verify", str(tmp_path / "tier"))
    assert code == 0 and (report["objects"], report["ok"], report["ignored"]) == (2, 2, 2)


def test_gc_to_a_fraction_of_a_byte_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    with pytest.raises(SystemExit) as exited:
        main(["cache", "gc", str(tmp_path), "--to", "0.5"])
    assert exited.value.code == 2 and len(object_files(tmp_path)) == 3


def _cli(*argv: str) -> int:
    return main(list(argv))


@pytest.mark.parametrize("action", [("stat",), ("verify",), ("gc", "--to", "0")])
def test_folder_without_permission_is_an_error_not_an_empty_report(action: tuple[str, ...]) -> None:
    from tests.unprivileged import run_unprivileged, world_traversable_dir

    parent = world_traversable_dir()
    try:
        fill(parent / "tier", 2)
        os.chmod(parent / "tier", 0o755)  # listable, but neither its fan-out folders nor their files
        code, raised, out, err = run_unprivileged(_cli, "cache", action[0], str(parent / "tier"), *action[1:])
        assert raised is None, raised
        assert code == 1 and "permission" in err.lower(), (code, out, err)
        assert len(object_files(parent / "tier")) == 2
        assert same_bits(open_store(parent / "tier").get(make_key(0)), make_block(0))
    finally:
        shutil.rmtree(parent)
