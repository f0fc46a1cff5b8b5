import threading

import pytest
import torch

from kvtier.block.hashing import hash_blocks, namespace_digest
from kvtier.config import KVLayout
from kvtier.errors import TierFullError, TierIOError
from kvtier.synthetic import block_content
from kvtier.tiers.base import BlockKey
from kvtier.tiers.host import HostStore
from kvtier.transfer.engine import TransferEngine
from kvtier.transfer.onload import LowerHit
from tests.transfer.fake_tier import LAYOUT as FAKE_LAYOUT
from tests.transfer.fake_tier import FakeTier, make_block, make_key

LAYOUT = KVLayout(num_layers=1, num_kv_heads=1, head_dim=4, block_size=2, dtype=torch.float16)
NS = namespace_digest("m", None)
KEYS = [BlockKey(NS, h, (2 * i, 2 * i + 1)) for i, h in enumerate(hash_blocks(NS, list(range(16)), 2))]


class GatedStore(HostStore):
    """A host store whose reads and writes wait for a gate, and can be told to fail."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.fail_puts = False

    def get(self, key, out=None):
        self.gate.wait()
        return super().get(key, out)

    def put(self, key, data):
        self.gate.wait()
        if self.fail_puts:
            raise TierIOError("injected EIO")
        super().put(key, data)


def filled_store(n=4):
    store = GatedStore(LAYOUT, 8)
    for key in KEYS[:n]:
        store.put(key, block_content(LAYOUT, key.block_hash))
    return store


def test_onload_returns_leading_run_and_unpins_every_block():
    store, engine = filled_store(), TransferEngine(num_workers=2)
    wrong = KEYS[2]._replace(token_ids=(7, 7))  # fails verification: a miss; block 3 is then not needed
    found = []
    for key in (KEYS[0], KEYS[1], wrong, KEYS[3]):
        store.pin(key.block_hash)
        found.append(LowerHit(store, key))
    loaded = engine.onload(found).wait(timeout_s=10)
    assert len(loaded) == 2
    assert all(torch.equal(d, block_content(LAYOUT, k.block_hash)) for d, k in zip(loaded, KEYS))
    engine.close()
    for key in KEYS[:4]:
        assert store.evict(key.block_hash)  # would raise if still pinned
    assert set(engine.stats()) == {"host.read"} and engine.stats()["host.read"]["count"] >= 3  # 4th may be cancelled


def test_cancel_before_reads_start_releases_pins():
    store, engine = filled_store(), TransferEngine(num_workers=1)
    store.gate.clear()
    found = [LowerHit(store, k) for k in KEYS[:3]]
    for _, key, _ in found:
        store.pin(key.block_hash)
    handle = engine.onload(found)
    handle.cancel()  # the first read may already be waiting on the gate; the others never start
    store.gate.set()
    engine.close()
    assert handle.done()
    for key in KEYS[:3]:
        assert store.evict(key.block_hash)


def test_spill_back_pressure_blocks_until_writes_finish():
    store, engine = GatedStore(LAYOUT, 8), TransferEngine(num_workers=1, max_inflight_write_bytes=2 * LAYOUT.page_size_bytes)
    store.gate.clear()
    first = [engine.spill(store, k, block_content(LAYOUT, k.block_hash)) for k in KEYS[:2]]
    third_submitted = threading.Event()
    thread = threading.Thread(target=lambda: (engine.spill(store, KEYS[2], block_content(LAYOUT, KEYS[2].block_hash)),
                                              third_submitted.set()))
    thread.start()
    assert not third_submitted.wait(timeout=0.2)  # budget of two blocks is full
    store.gate.set()
    thread.join(timeout=10)
    engine.flush()
    assert third_submitted.is_set() and all(f.result() for f in first) and store.num_blocks == 3
    engine.close()


def test_failed_spill_is_counted_not_raised():
    store, engine = GatedStore(LAYOUT, 8), TransferEngine(num_workers=1)
    store.fail_puts = True
    future = engine.spill(store, KEYS[0], block_content(LAYOUT, KEYS[0].block_hash))
    assert future.result(timeout=10) is False and engine.failed_writes == 1
    assert engine.stats()["host.write"]["count"] == 1
    engine.close()


def test_spill_in_flight_is_served_from_the_engine_copy_until_it_lands():
    store, engine = GatedStore(LAYOUT, 8), TransferEngine(num_workers=1)
    store.gate.clear()
    data = block_content(LAYOUT, KEYS[0].block_hash)
    engine.spill(store, KEYS[0], data)
    hit = engine.inflight(KEYS[0])
    assert hit is not None and hit.tier is store and torch.equal(hit.data, data)
    assert engine.inflight(KEYS[0]._replace(token_ids=(9, 9))) is None  # same hash, other tokens
    assert len(engine.onload([hit]).wait(timeout_s=10)) == 1
    store.gate.set()
    engine.flush()
    assert engine.inflight(KEYS[0]) is None and store.contains(KEYS[0].block_hash)
    engine.close()


def test_spill_many_writes_jobs_of_at_most_job_bytes_each_served_from_its_copy_until_it_lands():
    store, engine = GatedStore(LAYOUT, 8), TransferEngine(num_workers=2)
    store.gate.clear()
    datas = [block_content(LAYOUT, key.block_hash) for key in KEYS[:5]]
    futures = engine.spill_many(store, KEYS[:5], datas, job_bytes=2 * LAYOUT.page_size_bytes)
    assert len(futures) == 3  # 2 + 2 + 1 blocks
    assert all(torch.equal(engine.inflight(key).data, data) for key, data in zip(KEYS, datas))
    store.fail_puts = True
    store.gate.set()
    assert [f.result(timeout=10) for f in futures] == [[False, False], [False, False], [False]]
    assert engine.failed_writes == 5 and all(engine.inflight(key) is None for key in KEYS[:5])
    store.fail_puts = False
    tiny_jobs = engine.spill_many(store, KEYS[:2], datas[:2], job_bytes=1)  # one block a job at least
    assert [f.result(timeout=10) for f in tiny_jobs] == [[True], [True]]
    assert engine.spill_many(store, KEYS[2:3], datas[2:3])[0].result(timeout=10) == [True]
    engine.flush()
    assert store.num_blocks == 3 and engine._inflight_write_bytes == 0
    with pytest.raises(ValueError, match="2 keys and 1 tensors"):
        engine.spill_many(store, KEYS[:2], datas[:1])
    engine.close()


def test_awaitable_reads_and_writes_raise_the_tiers_own_errors_uncounted():
    tier, engine = FakeTier(), TransferEngine(num_workers=2)
    engine.write(tier, make_key(0), make_block(0)).result(timeout=10)
    out = torch.empty(FAKE_LAYOUT.block_shape, dtype=FAKE_LAYOUT.dtype)
    assert engine.read(tier, make_key(0), out).result(timeout=10) is out and torch.equal(out, make_block(0))
    assert engine.read(tier, make_key(9)).result(timeout=10) is None
    assert engine.contains(tier, make_key(0).block_hash).result(timeout=10)
    with pytest.raises(ValueError, match="shape"):
        engine.write(tier, make_key(1), torch.zeros(2)).result(timeout=10)
    tier.get_faults[make_key(0).block_hash] = TierIOError("injected EIO")
    with pytest.raises(TierIOError, match="injected EIO"):
        engine.read(tier, make_key(0)).result(timeout=10)
    engine.close()
    assert engine.failed_reads == engine.failed_writes == 0  # the caller got them
    assert engine.stats()["host.write"]["count"] == 2 and engine.stats()["host.read"]["count"] == 3


def test_write_many_attempts_every_put_then_raises_the_first_failure():
    tier, engine = FakeTier(), TransferEngine(num_workers=1)
    keys = [make_key(i) for i in range(5)]
    tier.put_faults[keys[1].block_hash] = TierFullError("first")
    tier.put_faults[keys[3].block_hash] = TierIOError("second")
    with pytest.raises(TierFullError, match="first"):
        engine.write_many(tier, keys, [make_block(i) for i in range(5)]).result(timeout=10)
    assert tier.calls == [("put", i) for i in range(5)] and tier.num_blocks == 3
    got = engine.read_many(tier, keys).result(timeout=10)
    assert [None if g is None else int(g.flatten()[0]) for g in got] == [0, None, 2, None, 4]
    with pytest.raises(ValueError, match="2 keys and 1 tensors"):
        engine.write_many(tier, keys[:2], [make_block(0)])
    engine.close()


def test_read_and_write_cancelled_before_they_start_never_run_and_free_their_place():
    tier, engine = FakeTier(), TransferEngine(num_workers=1)
    tier.put(make_key(0), make_block(0))
    tier.gate.clear()
    blocker = engine.read(tier, make_key(0))  # holds the only worker until the gate opens
    read, write = engine.read(tier, make_key(1)), engine.write(tier, make_key(2), make_block(2))
    cancelled = read.cancel(), write.cancel()
    later = engine.write(tier, make_key(3), make_block(3))
    tier.gate.set()
    later.result(timeout=10)
    engine.close()
    assert cancelled == (True, True) and blocker.result() is not None
    assert tier.calls == [("put", 0), ("get", 0), ("put", 3)]


def test_onload_reads_each_block_into_its_row_of_one_buffer():
    store, engine = HostStore(LAYOUT, 8), TransferEngine(num_workers=2)
    for key in KEYS[:3]:
        store.put(key, block_content(LAYOUT, key.block_hash))
        store.pin(key.block_hash)
    spilled = block_content(LAYOUT, KEYS[3].block_hash)  # a block whose spill is in flight: served from its copy
    found = [LowerHit(store, k) for k in KEYS[:3]] + [LowerHit(store, KEYS[3], spilled)]
    buffer = torch.zeros((4, *LAYOUT.block_shape), dtype=LAYOUT.dtype)
    loaded = engine.onload(found, landing=buffer).wait()
    assert [t.data_ptr() for t in loaded] == [buffer[i].data_ptr() for i in range(4)]
    for i, key in enumerate(KEYS[:4]):
        assert torch.equal(buffer[i], block_content(LAYOUT, key.block_hash))
    assert all(store.evict(k.block_hash) for k in KEYS[:3])  # unpinned after their reads (evict refuses pinned)
    engine.close()


def test_landing_buffers_are_reused_smallest_fit_first_and_prefaulted():
    from kvtier.transfer.landing import LandingBuffers

    buffers = LandingBuffers(LAYOUT, pin=False, prefault_blocks=8, min_blocks=2)
    first = buffers.take(3)
    assert first.shape[0] == 8 and int(first.abs().sum()) == 0  # the prefaulted one, zero-filled
    other = buffers.take(5)  # the first is in use: a new one
    assert other.shape[0] == 5 and other.data_ptr() != first.data_ptr()
    buffers.give_back(first, torch.device("cpu"))
    buffers.give_back(other, torch.device("cpu"))
    assert buffers.take(4).data_ptr() == other.data_ptr()  # 5 fits 4 better than 8
    assert buffers.take(4).data_ptr() == first.data_ptr()
    assert buffers.take(9).shape[0] == 9  # none fits: a new one


def _reader_threads(engine, store, keys, **kwargs):
    """The names of the threads that ran each read of an onload, and its handle."""
    names = []
    original = store.get

    def get(key, out=None):
        names.append(threading.current_thread().name)
        return original(key, out)

    store.get = get
    for key in keys:
        store.pin(key.block_hash)
    handle = engine.onload([LowerHit(store, k) for k in keys], **kwargs)
    return names, handle


def test_a_small_onload_the_caller_waits_for_is_read_in_its_own_thread():
    store, engine = filled_store(), TransferEngine(num_workers=2)
    names, handle = _reader_threads(engine, store, KEYS[:3], waiting=True)
    assert handle.done() and names == [threading.current_thread().name] * 3
    assert len(handle.wait()) == 3 and all(store.evict(k.block_hash) for k in KEYS[:3])  # read, then unpinned
    engine.close()


def test_an_onload_larger_than_the_inline_limit_or_not_waited_for_goes_to_the_workers():
    for kwargs, limit in (({"waiting": True}, 2 * LAYOUT.page_size_bytes), ({}, 1 << 30)):
        store, engine = filled_store(), TransferEngine(num_workers=2, inline_read_bytes=limit)
        names, handle = _reader_threads(engine, store, KEYS[:3], **kwargs)
        assert len(handle.wait(timeout_s=10)) == 3
        assert all(name.startswith("kvtier-transfer") for name in names), names
        engine.close()


def test_a_read_in_the_callers_thread_serves_copies_in_hand_and_tier_reads_in_prefix_order_into_the_landing():
    store, engine = filled_store(), TransferEngine(num_workers=2)
    for key in KEYS[:2] + KEYS[3:4]:
        store.pin(key.block_hash)
    in_hand = torch.full(LAYOUT.block_shape, 7.0, dtype=LAYOUT.dtype)
    found = [LowerHit(store, KEYS[0]), LowerHit(store, KEYS[1]), LowerHit(store, KEYS[2], in_hand),
             LowerHit(store, KEYS[3])]
    landing = torch.zeros((4, *LAYOUT.block_shape), dtype=LAYOUT.dtype)
    handle = engine.onload(found, landing=landing, waiting=True)
    assert handle.done() and handle.futures == [] and handle.num_blocks == 4
    loaded = handle.wait()
    expected = [store.get(k) for k in KEYS[:2]] + [in_hand, store.get(KEYS[3])]
    assert len(loaded) == 4 and all(torch.equal(a, b) for a, b in zip(loaded, expected))
    assert all(block.data_ptr() == landing[i].data_ptr() for i, block in enumerate(loaded))
    assert all(store.evict(k.block_hash) for k in KEYS[:2] + KEYS[3:4])  # read, then unpinned
    engine.close()


def test_a_read_in_the_callers_thread_stops_at_the_first_miss_and_releases_the_rest_unread():
    first, second, engine = FakeTier(), FakeTier(), TransferEngine(num_workers=2)
    keys = [make_key(i) for i in range(5)]
    for tier, held in ((first, keys[:3]), (second, keys[3:])):
        for key in held:
            tier.put(key, make_block(keys.index(key), FAKE_LAYOUT))
            tier.pin(key.block_hash)
    first.get_faults[keys[2].block_hash] = TierIOError("injected EIO")  # the first tier's run ends in a miss
    handle = engine.onload([LowerHit(first, k) for k in keys[:3]] + [LowerHit(second, k) for k in keys[3:]],
                           waiting=True)
    assert [int(block[0, 0, 0, 0, 0]) for block in handle.wait()] == [0, 1]
    assert ("get", 3) not in second.calls and ("get", 4) not in second.calls  # released, never read
    assert first.num_pinned == second.num_pinned == 0
    engine.close()
