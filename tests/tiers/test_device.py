import mmap
import resource

import pytest
import torch

from kvtier.config import KVLayout
from kvtier.tiers.device import DevicePool

LAYOUT = KVLayout(num_layers=3, num_kv_heads=2, head_dim=4, block_size=4, dtype=torch.float16)


def test_layer_views_share_storage_with_the_block_copies():
    pool = DevicePool(LAYOUT, 5)
    data = torch.randn((2, *LAYOUT.block_shape)).half()  # [n, layers, 2, kv_heads, block_size, head_dim]
    pool.write_blocks([3, 1], data)
    assert torch.equal(pool.read_blocks([3, 1]), data)
    # layer 2's values of block 1, head 1, token 0 are data[1, 2, 1, 1, 0]
    assert torch.equal(pool.v_cache(2)[1, 1, 0], data[1, 2, 1, 1, 0])
    assert pool.k_cache(0).shape == (5, 2, 4, 4) and pool.capacity_bytes == 5 * LAYOUT.page_size_bytes


def test_unknown_block_ids_and_bad_data_are_refused():
    pool = DevicePool(LAYOUT, 5)
    with pytest.raises(ValueError, match=r"block ids must be in \[0, 5\), got \[5\]"):
        pool.read_blocks([5])
    with pytest.raises(ValueError, match=r"block ids must be in \[0, 5\), got \[-1\]"):
        pool.write_blocks([-1], torch.zeros((1, *LAYOUT.block_shape), dtype=torch.float16))
    with pytest.raises(ValueError, match=r"write_blocks expects \[1, 3, 2, 2, 4, 4\] torch.float16, got"):
        pool.write_blocks([0], torch.zeros((1, *LAYOUT.block_shape), dtype=torch.float32))
    with pytest.raises(ValueError, match="DevicePool.num_blocks must be >= 1, got 0"):
        DevicePool(LAYOUT, 0)


@pytest.mark.parametrize("prefault", [True, False])
def test_a_prefaulted_cpu_pool_takes_no_page_faults_when_written(prefault):
    if not prefault and "[always]" in _read("/sys/kernel/mm/transparent_hugepage/enabled"):
        pytest.skip("huge pages by default: a lazy pool faults once per 2 MiB, too few to tell apart")
    layout = KVLayout(num_layers=2, num_kv_heads=2, head_dim=64, block_size=16, dtype=torch.float32)
    pool = DevicePool(layout, 256, prefault=prefault)  # 4 MiB: 1024 pages of 4 KiB
    ones = torch.ones_like(pool.kv_cache)  # made (and faulted in) before counting
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pool.kv_cache.copy_(ones)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    pages = pool.capacity_bytes // mmap.PAGESIZE
    if prefault:
        assert faults < pages // 10, f"{faults} page faults writing a prefaulted pool of {pages} pages"
    else:
        assert faults >= pages // 2, f"{faults} page faults writing a lazy pool of {pages} pages"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
