"""Random operation sequences against TieredKVCache, with every invariant checked after each step."""
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvtier.block.hashing import namespace_digest
from kvtier.cache import TieredKVCache
from kvtier.config import KVLayout
from kvtier.errors import OutOfBlocksError
from kvtier.synthetic import block_content, compute_blocks, run_prefill
from kvtier.tiers.host import HostStore

LAYOUT = KVLayout(num_layers=1, num_kv_heads=1, head_dim=4, block_size=2, dtype=torch.float16)
NAMESPACES = [namespace_digest("m", None), namespace_digest("m", "tenant-b")]
PREFIXES = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 9], [7, 7, 7, 7, 7, 7, 7, 7]]  # shared starts


class TieredCacheMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.host = HostStore(LAYOUT, 3)
        self.cache = TieredKVCache(LAYOUT, 5, [self.host, HostStore(LAYOUT, 4)])
        self.live: list[str] = []
        self.counter = 0

    @rule(prefix=st.sampled_from(PREFIXES), suffix=st.lists(st.integers(0, 3), max_size=4),
          ns=st.sampled_from(NAMESPACES))
    def allocate_and_compute(self, prefix, suffix, ns):
        tokens, seq_id = prefix + suffix, f"s{self.counter}"
        self.counter += 1
        try:
            seq = self.cache.allocate(seq_id, tokens, ns)
        except OutOfBlocksError:
            assert seq_id not in self.cache.manager.seqs
            return
        run_prefill(self.cache, seq)  # every block that came back up equals what went down
        self.live.append(seq_id)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), tokens=st.lists(st.integers(0, 3), min_size=1, max_size=3))
    def append_and_compute(self, data, tokens):
        seq_id = data.draw(st.sampled_from(self.live))
        seq = self.cache.manager.seq(seq_id)
        before = len(seq.token_ids) // LAYOUT.block_size
        try:
            self.cache.append(seq_id, tokens)
        except OutOfBlocksError:
            return
        compute_blocks(self.cache, seq, before, len(seq.token_ids) // LAYOUT.block_size)
        self.cache.mark_computed(seq_id, len(seq.token_ids))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        seq_id = data.draw(st.sampled_from(self.live))
        self.live.remove(seq_id)
        self.cache.free(seq_id)

    @invariant()
    def refcounts_match_tables_and_free_list(self):
        alloc = self.cache.manager.allocator
        users = {b.block_id: 0 for b in alloc.blocks}
        for seq in self.cache.manager.seqs.values():
            for block in seq.blocks:
                users[block.block_id] += 1
        free = alloc.free_queue  # NOTE: its linked lists only: iterating it would make the never-used blocks
        free_ids = [b.block_id for b in free.empty] + [b.block_id for b in free.cached]
        never_used = alloc.num_blocks - len(alloc.blocks)
        assert [b.block_id for b in alloc.blocks] == list(range(len(alloc.blocks)))  # made in id order
        assert len(free_ids) == len(set(free_ids)) and len(free_ids) + never_used == alloc.num_free_blocks
        assert all(b.block_hash is None for b in free.empty) and all(b.block_hash is not None for b in free.cached)
        for block in alloc.blocks:
            assert block.ref_cnt >= 0 and block.ref_cnt == users[block.block_id], block
            assert (block.ref_cnt == 0) == (block.block_id in free_ids), block
        assert alloc.num_free_blocks + sum(1 for b in alloc.blocks if b.ref_cnt > 0) == alloc.num_blocks

    @invariant()
    def hash_map_points_at_blocks_holding_that_content(self):
        alloc = self.cache.manager.allocator
        for block_hash, block in alloc.cached.items():
            assert block.block_hash == block_hash and alloc.blocks[block.block_id] is block
            data = self.cache.pool.read_blocks([block.block_id])[0]
            assert torch.equal(data, block_content(LAYOUT, block_hash))

    @invariant()
    def no_tier_over_capacity(self):
        for tier in self.cache.tiers:
            assert tier.used_bytes <= tier.capacity_bytes


TieredCacheMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_tiered_cache_state_machine = TieredCacheMachine.TestCase
