"""The plug-in's parts that need no vLLM: options, slot table, shared slab, page copies (default run)."""
from __future__ import annotations

import pytest
import torch

from kvtier.config import DiskTierConfig, KVLayout, SharedTierConfig
from kvtier.integrations.vllm.options import VLLMTierOptions
from kvtier.integrations.vllm.pages import (
    block_to_pages,
    check_page_format,
    pages_to_block,
    pages_to_block_reference,
)
from kvtier.integrations.vllm.slab import HEADER_BYTES, HostSlab, slab_path, slot_stride
from kvtier.integrations.vllm.slots import SlotState, SlotTable

LAYOUT = KVLayout(num_layers=3, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.bfloat16)


# -- options ---------------------------------------------------------------------------------------

def test_options_map_onto_kvtier_configs(tmp_path) -> None:
    opts = VLLMTierOptions.from_extra_config({"spec_name": "KVTierSpec", "kvtier": {
        "host_bytes": "64MiB", "salt": "tenant-a",
        "tier": {"kind": "shared", "path": str(tmp_path), "capacity_bytes": "1GiB", "fsync": False}}})
    assert opts.host_bytes == 64 << 20 and opts.salt == "tenant-a"
    assert opts.tier == SharedTierConfig(path=str(tmp_path), capacity_bytes=1 << 30, fsync=False)
    disk = VLLMTierOptions.from_extra_config({"kvtier": {"tier": {"kind": "disk", "path": "/x", "capacity_bytes": 5}}})
    assert disk.tier == DiskTierConfig(path="/x", capacity_bytes=5)
    assert VLLMTierOptions.from_extra_config({}) == VLLMTierOptions()  # host memory only, 1 GiB


@pytest.mark.parametrize("kvtier, message", [
    ({"host_byte": 5}, "unknown key 'host_byte'"),
    ({"host_bytes": 0}, "host_bytes must be a byte count > 0"),
    ({"host_bytes": "lots"}, "not a byte count"),
    ({"tier": {"kind": "host", "num_blocks": 4}}, "tier.kind must be 'disk' or 'shared'"),
    ({"tier": {"kind": "disk", "path": "/x"}}, "missing key 'capacity_bytes'"),
    ({"tier": {"kind": "nfs"}}, "kind must be one of"),
    ({"salt": 3}, "salt must be a string"),
    ({"io_threads": 0}, "io_threads must be an integer in [1, 64]"),
    ("a string", "must be a dict"),
])
def test_options_refuse_bad_values(kvtier: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        VLLMTierOptions.from_extra_config({"kvtier": kvtier})


# -- slot table ------------------------------------------------------------------------------------

def test_slots_reuse_least_recently_used_ready_slot_without_pins() -> None:
    table = SlotTable(2)
    (a,), _ = table.claim([b"a"], SlotState.STORING)
    (b,), _ = table.claim([b"b"], SlotState.FILLING)
    assert table.claim([b"c"], SlotState.STORING) == ([], [])  # nothing READY: nothing to evict
    table.set_state(b"a", SlotState.READY)
    table.set_state(b"b", SlotState.READY)
    table.touch(b"a")  # b is now the least recently used
    (c,), evicted = table.claim([b"c"], SlotState.STORING)
    assert evicted == [b"b"] and c.index == b.index and b"b" not in table
    table.pin(b"a")
    assert table.claim([b"d"], SlotState.STORING) == ([], [])  # a pinned, c storing
    table.unpin(b"a")
    (d,), evicted = table.claim([b"d"], SlotState.STORING)
    assert evicted == [b"a"] and d.index == a.index


def test_slots_partial_claim_release_and_clear() -> None:
    table = SlotTable(3)
    claimed, _ = table.claim([b"a", b"b", b"c", b"d"], SlotState.STORING)
    assert [s.index for s in claimed] == [0, 1, 2] and len(table) == 3
    table.release(b"b")
    assert table.get(b"b") is None and table.claim([b"e"], SlotState.FILLING)[0][0].index == 1
    for key in (b"a", b"c"):
        table.set_state(key, SlotState.READY)
    table.pin(b"c")
    assert table.clear_unpinned() == [b"a"]
    assert table.count(SlotState.READY) == 1 and table.count(SlotState.FILLING) == 1
    with pytest.raises(RuntimeError, match="pins"):
        table.release(b"c")
    with pytest.raises(KeyError, match="already holds"):
        table.claim([b"c"], SlotState.STORING)
    table.unpin(b"c")
    with pytest.raises(RuntimeError, match="not pinned"):
        table.unpin(b"c")


# -- slab ------------------------------------------------------------------------------------------

def test_two_openers_share_slots_and_the_layout(tmp_path) -> None:
    path = slab_path(str(tmp_path), "engine/../1", 0)
    assert "/" not in path.removeprefix(str(tmp_path) + "/")
    worker = HostSlab(path, 3, LAYOUT.page_size_bytes, create=True)
    manager = HostSlab(path, 3, LAYOUT.page_size_bytes, create=False)
    assert manager.read_layout() is None
    worker.publish_layout(LAYOUT)
    assert manager.read_layout() == LAYOUT
    block = torch.randn(LAYOUT.block_shape).to(LAYOUT.dtype)
    worker.slot(2).copy_(block)
    assert torch.equal(manager.slot(2), block) and not manager.slot(1).any()
    assert manager.slot(2).data_ptr() % 4096 == (HEADER_BYTES + 2 * slot_stride(LAYOUT.page_size_bytes)) % 4096 == 0
    manager.unlink()
    worker.slot(0).fill_(1)  # the mapping outlives the name
    assert manager.slot(0).eq(1).all()
    with pytest.raises(IndexError):
        manager.slot(3)


def test_slab_refuses_another_engines_file_and_mismatched_settings(tmp_path) -> None:
    path = str(tmp_path / "s.slab")
    HostSlab(path, 2, LAYOUT.page_size_bytes, create=True)
    with pytest.raises(ValueError, match="another engine on this host has the same engine_id"):
        HostSlab(path, 2, LAYOUT.page_size_bytes, create=True)
    with pytest.raises(ValueError, match="not the .* this engine's settings make"):
        HostSlab(path, 4, LAYOUT.page_size_bytes, create=False)
    with pytest.raises(ValueError, match="the vLLM worker makes it before"):
        HostSlab(str(tmp_path / "none.slab"), 2, LAYOUT.page_size_bytes, create=False)
    with pytest.raises(ValueError, match="raise .*host_bytes"):
        HostSlab(str(tmp_path / "t.slab"), 0, LAYOUT.page_size_bytes, create=True)
    with pytest.raises(ValueError, match="vLLM reports"):
        HostSlab(str(tmp_path / "u.slab"), 1, LAYOUT.page_size_bytes + 2, create=True).publish_layout(LAYOUT)
    with pytest.raises(RuntimeError, match="no layout yet"):
        HostSlab(str(tmp_path / "v.slab"), 1, LAYOUT.page_size_bytes, create=True).slot(0)


def test_slab_too_large_for_its_tmpfs_is_an_error_not_a_crash(tmp_path) -> None:
    from tests.tiers.disk_support import tmpfs_mount, tmpfs_unmount

    mount_point = tmp_path / "shm"
    tmpfs_mount(mount_point, "size=1m")
    try:
        with pytest.raises(ValueError, match=r"cannot reserve \d+ bytes .* free there.*--shm-size"):
            HostSlab(str(mount_point / "s.slab"), 512, LAYOUT.page_size_bytes * 8, create=True)  # 4 MiB
        slab = HostSlab(str(mount_point / "s.slab"), 2, LAYOUT.page_size_bytes, create=True)  # none left behind
        slab.prefault()
    finally:
        tmpfs_unmount(mount_point)


# -- pages -----------------------------------------------------------------------------------------

def test_page_copies_match_their_twin_and_round_trip() -> None:
    num_blocks, padded = 5, LAYOUT.layer_page_size_bytes + 64  # vLLM may pad pages
    pages = [torch.randint(-128, 128, (num_blocks, padded), dtype=torch.int8) for _ in range(LAYOUT.num_layers)]
    fast = torch.empty(LAYOUT.block_shape, dtype=LAYOUT.dtype)
    slow = torch.empty_like(fast)
    pages_to_block(pages, 3, fast, LAYOUT)
    pages_to_block_reference(pages, 3, slow, LAYOUT)
    assert torch.equal(fast.view(torch.int16), slow.view(torch.int16))  # bit-exact, NaN patterns included
    copies = [torch.zeros_like(p) for p in pages]
    block_to_pages(fast, copies, 1, LAYOUT)
    n = LAYOUT.layer_page_size_bytes
    for original, copy in zip(pages, copies):
        assert torch.equal(copy[1, :n], original[3, :n]) and not copy[1, n:].any() and not copy[0].any()


def test_k_is_transposed_in_a_page_and_unknown_formats_are_refused() -> None:
    layout = KVLayout(num_layers=1, num_kv_heads=1, head_dim=2, block_size=3, dtype=torch.float32)
    # one head: K^T [D=2, N=3] then V [N=3, D=2]
    page = torch.tensor([[0, 1, 2, 10, 11, 12, 20, 21, 30, 31, 40, 41]], dtype=torch.float32).view(torch.int8)
    block = torch.empty(layout.block_shape)
    pages_to_block([page], 0, block, layout)
    assert block[0, 0, 0].tolist() == [[0, 10], [1, 11], [2, 12]]  # token n: (K[n, 0], K[n, 1])
    assert block[0, 1, 0].tolist() == [[20, 21], [30, 31], [40, 41]]
    check_page_format("cpu-vec")
    for name in ("cpu-amx", "cuda-unverified"):
        with pytest.raises(ValueError, match="kvtier's plug-in knows"):
            check_page_format(name)
