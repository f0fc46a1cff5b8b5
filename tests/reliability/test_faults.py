"""The reliability suite (`pytest -m reliability`; part of CI): faults in every tier, outputs always equal
the run with every block resident, and one printed line of counts (tests/reliability/counts.py)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvtier.config import DiskTierConfig, RemoteTierConfig
from kvtier.tiers.disk import DiskStore
from kvtier.tiers.disk.fsck import verify_folder
from kvtier.tiers.remote import RemoteStore
from tests.reliability.counts import Counts, record
from tests.reliability.workload import LAYOUT, PROMPTS, judge, reference, run
from tests.tiers.remote.redis_server import RedisServer

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


def disk(path: Path) -> DiskStore:
    return DiskStore(LAYOUT, DiskTierConfig(path=str(path), capacity_bytes=64 << 20, fsync=False))


def written(path: Path) -> list[int]:
    """A folder holding every block of the workload (written through); the cached tokens of a clean rerun."""
    store = disk(path)
    outputs, counts = run([store], write_through=[store])
    assert outputs is not None and judge(outputs, counts).wrong == 0
    clean_copy = path.with_name(path.name + "-clean")
    shutil.copytree(path, clean_copy)
    again, _ = run([disk(clean_copy)])
    assert again is not None
    return [o.num_cached_tokens for o in again]


def objects(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("[0-9a-f][0-9a-f]/*.kvb") if p.is_file() and not p.is_symlink())


def damage(data: bytes, how: int, other: bytes) -> bytes:
    if how == 0:
        flipped = bytearray(data)
        flipped[-7] ^= 0x10
        return bytes(flipped)
    return data[:len(data) // 2] if how == 1 else other


def test_damaged_objects_on_disk(tmp_path: Path) -> None:
    folder = tmp_path / "disk"
    clean = written(folder)
    files = objects(folder)
    chosen = random.Random(1).sample(files, 6)
    damaged = {}
    for i, path in enumerate(chosen):
        damaged[path] = damage(path.read_bytes(), i % 3, files[(files.index(path) + 1) % len(files)].read_bytes())
        path.write_bytes(damaged[path])
    store = disk(folder)
    outputs, counts = run([store])
    counts.injected = len(chosen)
    # NOTE: per object, not the tier's count (two reads of one object at once both count it)
    removed = sum(not path.exists() or path.read_bytes() != bad for path, bad in damaged.items())
    report = verify_folder(str(folder))  # what no read met is still there, and found
    counts.detected = removed + report["corrupt"] + report["unreadable"]
    record("damaged objects on disk", judge(outputs, counts, clean))
    assert (counts.wrong, counts.crashes, counts.hangs) == (0, 0, 0) and counts.detected == counts.injected


def test_entries_planted_at_object_names(tmp_path: Path) -> None:
    folder = tmp_path / "disk"
    clean = written(folder)
    fifo, link, directory = random.Random(2).sample(objects(folder), 3)
    for path in (fifo, link, directory):
        path.unlink()
    os.mkfifo(fifo)
    os.symlink("/etc/hostname", link)
    directory.mkdir()
    store = disk(folder)
    outputs, counts = run([store])  # a FIFO opened for reading would block: the tier never opens one
    counts.injected = 3
    report = verify_folder(str(folder))
    healed = sum(path.is_file() and not path.is_symlink() for path in (fifo, link, directory))  # rewritten whole
    counts.detected = report["ignored"] + healed  # never opened as objects: ignored by the scans, or replaced
    record("FIFO, symlink and folder at object names", judge(outputs, counts, clean))
    assert (counts.wrong, counts.crashes, counts.hangs) == (0, 0, 0) and counts.detected == counts.injected


def test_full_disk(tmp_path: Path) -> None:
    from tests.tiers.disk_support import tmpfs_mount, tmpfs_unmount

    mount_point = tmp_path / "small"
    tmpfs_mount(mount_point, "size=16k")
    try:
        store = DiskStore(LAYOUT, DiskTierConfig(path=str(mount_point / "kv"), capacity_bytes=64 << 20, fsync=False))
        outputs, counts = run([store], write_through=[store])
        counts.injected = 1
        # the tier saw the filesystem full: it evicted its own objects to make room, refused, or a write failed
        counts.detected = int(store.stats.evictions + store.stats.rejected + store.stats.io_errors > 0)
        record("full disk (a 16 KiB tmpfs)", judge(outputs, counts))
        assert (counts.wrong, counts.crashes, counts.hangs) == (0, 0, 0) and counts.detected == 1
    finally:
        tmpfs_unmount(mount_point)


def remote(server: RedisServer) -> RemoteStore:
    return RemoteStore(LAYOUT, RemoteTierConfig(url=server.url, capacity_bytes=64 << 20, timeout_s=0.2, retries=1,
                                                backoff_s=0.01, breaker_failures=2, breaker_reset_s=0.05))


def test_damaged_values_in_redis(redis_server: RedisServer) -> None:
    writer = remote(redis_server)
    assert run([writer], write_through=[writer])[0] is not None
    clean, _ = run([remote(redis_server)])
    assert clean is not None
    client = writer._client
    names = sorted(client.keys("kv:*"))
    chosen = random.Random(3).sample(names, 6)
    values = {name: client.get(name) for name in names}
    damaged = {name: damage(values[name], i % 3, values[names[(names.index(name) + 1) % len(names)]])
               for i, name in enumerate(chosen)}
    for name, value in damaged.items():
        client.set(name, value)
    store = remote(redis_server)
    outputs, counts = run([store])
    counts.injected = len(chosen)
    for name in chosen:  # per value: deleted or rewritten whole by the tier, else refused by a reader now
        value = client.get(name)
        counts.detected += int(value is None or value != damaged[name] or not is_object_at(name, value))
    record("damaged values in Redis", judge(outputs, counts, [o.num_cached_tokens for o in clean]))
    assert (counts.wrong, counts.crashes, counts.hangs) == (0, 0, 0) and counts.detected == counts.injected


def is_object_at(name: bytes, value: bytes) -> bool:
    """Whether `value` is a whole, valid object of the block its key names (what any reader checks)."""
    from kvtier.errors import FormatError
    from kvtier.tiers.format.verify import decode_block

    try:
        header, _ = decode_block(bytearray(value))
    except FormatError:
        return False
    return name.decode().endswith(header.block_hash.hex())


class KilledMidRun(RemoteStore):
    """A remote tier whose server is killed at its 10th write and started again after 3 failed calls."""

    def __init__(self, server: RedisServer) -> None:
        base = remote(server)
        super().__init__(base.layout, base.config)
        self.server, self.kills, self.restarts = server, 0, 0
        self._faults = threading.Lock()  # puts come from several transfer workers

    def put(self, key, data) -> None:  # type: ignore[no-untyped-def]
        with self._faults:
            if self.stats.puts >= 10 and not self.kills:
                self.server.stop()
                self.kills += 1
            if self.stats.io_errors >= 3 and not self.restarts:
                self.server.start()  # same port, empty: the hits of what it held are gone
                self.restarts += 1
        super().put(key, data)


def test_redis_killed_mid_run_and_restarted(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        store = KilledMidRun(server)
        outputs, counts = run([store], write_through=[store])
        counts.injected = store.kills
        counts.detected = int(store.stats.io_errors > 0)
        record("Redis killed mid-run, then restarted", judge(outputs, counts))
        assert store.kills == 1 and store.restarts == 1 and store.stats.puts > 10  # writes resumed
        assert (counts.wrong, counts.crashes, counts.hangs) == (0, 0, 0) and counts.detected == 1
    finally:
        server.stop()


def _generate(folder: Path, prompts: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "kvtier", "generate", "--model", "tiny", "--prompts", str(prompts), "--block-size",
           "4", "--max-batched-tokens", "16", "--host-blocks", "0", "--disk", str(folder), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def test_engine_killed_during_spills_then_restarted(tmp_path: Path) -> None:
    """SIGKILL while the disk tier is being written; a new engine on the folder serves only whole objects."""
    prompts = tmp_path / "in.jsonl"
    many = [PROMPTS[i % len(PROMPTS)] + [i % 250] * 40 for i in range(48)]  # enough work to be killed in
    prompts.write_text("".join(json.dumps({"id": f"r{i}", "prompt_token_ids": p, "max_tokens": 8}) + "\n"
                               for i, p in enumerate(many)))
    want = _generate(tmp_path / "unused", prompts, "--no-disk", "--device-blocks", "4096").communicate(timeout=300)[0]
    folder = tmp_path / "disk"
    victim = _generate(folder, prompts, "--device-blocks", "48")
    deadline = time.monotonic() + 120
    while len(objects(folder)) < 20 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # NOTE: waiting for the victim's progress, not for a race to settle
    counts = Counts(injected=int(victim.poll() is None))
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    report = verify_folder(str(folder))
    counts.detected = counts.injected * int(report["corrupt"] == report["unreadable"] == 0)  # nothing torn to serve
    again = _generate(folder, prompts, "--device-blocks", "48")
    try:
        out = again.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        again.kill()
        counts.hangs += 1
        out = b""
    counts.crashes += int(again.returncode not in (0, None) and not counts.hangs)
    got = [json.loads(line) for line in out.splitlines()]
    wanted = [json.loads(line) for line in want.splitlines()]
    counts.wrong += sum(g["token_ids"] != w["token_ids"] for g, w in zip(got, wanted)) + abs(len(got) - len(wanted))
    record("engine SIGKILLed during spills, restarted on the folder", counts)
    assert counts.injected == 1 and sum(g["num_cached_tokens"] for g in got) > 0  # the restart reused the folder
    assert (counts.wrong, counts.crashes, counts.hangs) == (0, 0, 0) and counts.detected == 1


def test_reference_is_stable() -> None:
    assert len(reference()) == len(PROMPTS)
