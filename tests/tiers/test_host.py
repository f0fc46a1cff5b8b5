import pytest
import torch

from kvtier.block.hashing import hash_blocks, namespace_digest
from kvtier.config import KVLayout
from kvtier.errors import TierFullError
from kvtier.tiers.base import BlockKey
from kvtier.tiers.host import HostStore

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4, dtype=torch.float16)
NS = namespace_digest("m", None)
KEYS = [BlockKey(NS, h, tuple(range(i * 4, i * 4 + 4)))
        for i, h in enumerate(hash_blocks(NS, list(range(40)), 4))]


def block(seed):
    return torch.randn(LAYOUT.block_shape, generator=torch.Generator().manual_seed(seed)).half()


def test_put_get_round_trip_is_bit_identical():
    store = HostStore(LAYOUT, 3)
    store.put(KEYS[0], block(0))
    assert torch.equal(store.get(KEYS[0]), block(0))
    out = torch.empty(LAYOUT.block_shape, dtype=torch.float16)
    assert store.get(KEYS[0], out=out) is out and torch.equal(out, block(0))
    assert store.stats.hits == 2 and store.stats.bytes_read == 2 * LAYOUT.page_size_bytes


def test_lru_eviction_hands_block_to_hook_and_never_exceeds_capacity():
    evicted = []
    store = HostStore(LAYOUT, 2)
    store.set_eviction_hook(lambda key, data: evicted.append((key, data.clone())))
    store.put(KEYS[0], block(0))
    store.put(KEYS[1], block(1))
    store.get(KEYS[0])  # 1 is now least recently used
    store.put(KEYS[2], block(2))
    assert [k for k, _ in evicted] == [KEYS[1]] and torch.equal(evicted[0][1], block(1))
    assert store.num_blocks == 2 and store.used_bytes == store.capacity_bytes
    assert not store.contains(KEYS[1].block_hash) and store.get(KEYS[1]) is None


def test_pinned_blocks_are_never_evicted_and_full_pinned_tier_refuses():
    store = HostStore(LAYOUT, 2)
    store.put(KEYS[0], block(0))
    store.put(KEYS[1], block(1))
    store.pin(KEYS[0].block_hash)
    store.put(KEYS[2], block(2))  # evicts 1, not pinned 0
    assert store.contains(KEYS[0].block_hash) and not store.contains(KEYS[1].block_hash)
    store.pin(KEYS[2].block_hash)
    with pytest.raises(TierFullError, match=r"host tier full: 2 of 2 slots hold blocks and all 2 are pinned"):
        store.put(KEYS[3], block(3))
    with pytest.raises(RuntimeError, match="pinned by a transfer"):
        store.evict(KEYS[0].block_hash)
    store.unpin(KEYS[0].block_hash)
    assert store.evict(KEYS[0].block_hash) and store.num_blocks == 1


def test_get_with_another_namespace_or_tokens_is_a_miss():
    store = HostStore(LAYOUT, 2)
    store.put(KEYS[0], block(0))
    other_ns = BlockKey(namespace_digest("m", "t"), KEYS[0].block_hash, KEYS[0].token_ids)
    other_tokens = KEYS[0]._replace(token_ids=(9, 9, 9, 9))
    assert store.get(other_ns) is None and store.get(other_tokens) is None
    assert store.stats.misses == 2


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(LAYOUT.block_shape, dtype=torch.float32)])
def test_put_of_wrong_shape_or_dtype_raises(bad):
    with pytest.raises(ValueError, match=r"HostStore.put expects a block of shape \[2, 2, 2, 4, 4\] and dtype torch.float16"):
        HostStore(LAYOUT, 2).put(KEYS[0], bad)


@pytest.mark.parametrize("bad", [torch.zeros(3, dtype=torch.float16),
                                 torch.zeros(LAYOUT.block_shape, dtype=torch.float32)])
def test_get_into_an_output_of_another_shape_or_dtype_raises(bad):
    store = HostStore(LAYOUT, 2)
    store.put(KEYS[0], block(0))
    with pytest.raises(ValueError, match=r"HostStore.get expects an output block of shape \[2, 2, 2, 4, 4\] "
                                         r"and dtype torch.float16"):
        store.get(KEYS[0], out=bad)


def test_put_of_a_non_tensor_is_a_type_error():
    with pytest.raises(TypeError, match="HostStore.put expects a torch.Tensor, got bytes"):
        HostStore(LAYOUT, 2).put(KEYS[0], bytes(LAYOUT.page_size_bytes))


def test_pin_if_held_pins_only_what_the_tier_holds():
    store = HostStore(LAYOUT, 1)
    assert not store.pin_if_held(KEYS[0].block_hash)
    store.put(KEYS[0], block(0))
    assert store.pin_if_held(KEYS[0].block_hash)
    with pytest.raises(TierFullError):  # its one slot is pinned
        store.put(KEYS[1], block(1))
    store.unpin(KEYS[0].block_hash)
    store.put(KEYS[1], block(1))
    assert not store.contains(KEYS[0].block_hash)


def test_pin_misuse_raises():
    store = HostStore(LAYOUT, 2)
    with pytest.raises(KeyError, match="not in the host tier"):  # TierStore.pin's contract
        store.pin(KEYS[0].block_hash)
    store.put(KEYS[0], block(0))
    with pytest.raises(RuntimeError, match="not pinned"):
        store.unpin(KEYS[0].block_hash)
    with pytest.raises(ValueError, match="HostStore.num_slots must be >= 1, got 0"):
        HostStore(LAYOUT, 0)


def test_pin_known_pins_what_the_tier_holds_and_unpin_many_releases_them():
    store = HostStore(LAYOUT, 2)
    store.put(KEYS[1], block(1))
    assert store.pin_known([KEYS[0].block_hash, KEYS[1].block_hash]) == [False, True]
    assert store._pins == {KEYS[1].block_hash: 1}
    store.unpin_many([KEYS[1].block_hash])
    assert not store._pins
    with pytest.raises(RuntimeError, match="not pinned"):
        store.unpin_many([KEYS[1].block_hash])
