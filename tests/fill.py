"""Test helper: block contents derived from the block's hash, so any block can be checked anywhere."""
import torch

from kvtier.config import KVLayout


def block_content(layout: KVLayout, block_hash: bytes) -> torch.Tensor:
    """A block of `layout.block_shape` whose values are a pure function of `block_hash`."""
    gen = torch.Generator().manual_seed(int.from_bytes(block_hash[:8], "little"))
    return torch.randn(layout.block_shape, generator=gen).to(layout.dtype)


def compute_blocks(cache, seq, start_block: int, stop_block: int) -> None:
    """Stand-in for the forward pass: write each block's content for blocks [start, stop) of `seq`."""
    if stop_block > len(seq.block_hashes):
        seq.block_hashes += cache.manager.hash_tokens(seq.token_ids, seq.namespace)[len(seq.block_hashes):]
    ids = seq.block_ids[start_block:stop_block]
    if ids:
        data = torch.stack([block_content(cache.layout, h) for h in seq.block_hashes[start_block:stop_block]])
        cache.pool.write_blocks(ids, data)
