"""TieredCache: a transformers `Cache` whose K/V live in kvtier's tiers, for `model.generate` and
hand-written forward loops.

Every layer's K/V are kvtier blocks (one model layer each, see layer_store.py) in a device pool
of `device_blocks`, which spills them to host RAM and disk (the layer just run first) and reads
them back when their layer runs again. A context larger than the device budget therefore generates, and
the same tokens as DynamicCache come out (the K/V handed back are the very values stored).
Passing the cache to a second `generate` whose prompt extends the first call's (the next turn of
a chat) reuses what the first call stored, from whichever tier holds it; `reused_tokens` says how
much. As with DynamicCache, the second prompt must begin with the first call's prompt and output.

Importing this module imports transformers (`pip install kvtier[hf]`); importing kvtier does not.
"""
from __future__ import annotations

import shutil
import uuid
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvtier.cache import TieredKVCache
from kvtier.config import DeviceTierConfig, DiskTierConfig, HostTierConfig, KVLayout, KVTierConfig, TransferConfig
from kvtier.config.tiers import TierConfig
from kvtier.integrations.hf_support import attention_shape
from kvtier.integrations.layer_store import LayerStore


class TieredCache(Cache):
    """A drop-in for DynamicCache backed by kvtier's block manager and tiers.

    Args:
        config: the model's config (`model.config`); refused by name if not served (hf_support.py).
        device_blocks: device blocks of `block_size` tokens of one layer; None: enough for every row
            to fill the model's context window in every layer (nothing spills).
        host_blocks: host RAM blocks below the device; None: no host tier.
        disk_dir: a folder for the disk tier (warm-restartable, verified); None: no disk tier.
        disk_bytes: the disk tier's byte budget; None: the folder's free space when the cache opens.
        block_size: tokens per block.
        fsync: whether disk writes are fsynced (False for scratch folders).
        num_workers: transfer threads.
        prefetch_layers: read the next layer's spilled blocks back while a layer computes (in the transfer
            engine's workers), instead of when that layer updates. None: where the K/V live on a GPU,
            whose compute leaves the CPU free for the reads; on this project's 2-core CPU the reads
            took cores from the model's own threads (README: TieredCache).
        kv_config: the whole KVTierConfig instead of the options above (any tiers: shared folders,
            several of them); its layout holds one model layer per block (`num_layers=1`), the
            model's KV heads and head_dim, and the dtype the model runs in.
    """

    def __init__(self, config: Any, *, device_blocks: int | None = None, host_blocks: int | None = None,
                 disk_dir: str | None = None, disk_bytes: int | None = None, block_size: int = 16,
                 fsync: bool = True, num_workers: int = 4, prefetch_layers: bool | None = None,
                 kv_config: KVTierConfig | None = None) -> None:
        self.num_layers, self.num_kv_heads, self.head_dim = attention_shape(config)
        if kv_config is not None:
            _check_kv_config(kv_config, self.num_kv_heads, self.head_dim)
            if (device_blocks, host_blocks, disk_dir, disk_bytes) != (None, None, None, None):
                raise ValueError("give TieredCache either kv_config or device_blocks/host_blocks/disk_dir/disk_bytes, "
                                 "not both")
        self._kv_config = kv_config
        self.max_positions = int(getattr(config.get_text_config(decoder=True), "max_position_embeddings", 0) or 0)
        if device_blocks is None and not self.max_positions:
            raise ValueError("the config has no max_position_embeddings: give TieredCache(device_blocks=...)")
        self.device_blocks, self.host_blocks, self.block_size = device_blocks, host_blocks, block_size
        self.disk_dir, self.disk_bytes, self.fsync, self.num_workers = disk_dir, disk_bytes, fsync, num_workers
        self.prefetch_layers = prefetch_layers
        self._id = uuid.uuid4().hex
        self.kv: TieredKVCache | None = None  # opened at the first update, when dtype, device and batch are known
        self.store: LayerStore | None = None
        self.reused_tokens = 0  # tokens held before the last prefill began (a previous call's context)
        super().__init__(layers=[TieredLayer(self, index) for index in range(self.num_layers)])

    def kv_config(self, key_states: torch.Tensor) -> KVTierConfig:
        """The KVTierConfig this cache opens with, for K/V like `key_states` `[batch, heads, tokens, head_dim]`."""
        if self._kv_config is not None:
            if self._kv_config.layout.dtype != key_states.dtype:
                raise ValueError(f"kv_config's layout is {self._kv_config.layout.dtype}, the model's K/V are "
                                 f"{key_states.dtype}; build the layout with dtype={key_states.dtype}")
            return self._kv_config
        bs = self.block_size
        layout = KVLayout(num_layers=1, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, block_size=bs,
                          dtype=key_states.dtype)
        device_blocks = self.device_blocks
        if device_blocks is None:
            device_blocks = key_states.shape[0] * self.num_layers * (-(-self.max_positions // bs) + 1)
        tiers: list[TierConfig] = []
        if self.host_blocks is not None:
            tiers.append(HostTierConfig(num_blocks=self.host_blocks))
        if self.disk_dir is not None:
            disk_bytes = self.disk_bytes if self.disk_bytes is not None else shutil.disk_usage(self.disk_dir).free
            tiers.append(DiskTierConfig(path=self.disk_dir, capacity_bytes=disk_bytes, fsync=self.fsync))
        # NOTE: prefault=False: the default pool holds the whole window, and pages are made as written
        device = DeviceTierConfig(num_blocks=device_blocks, device=str(key_states.device), prefault=False)
        return KVTierConfig(layout=layout, device=device,
                            tiers=tuple(tiers), transfer=TransferConfig(num_workers=self.num_workers, landing_bytes=0))

    def _open(self, key_states: torch.Tensor) -> LayerStore:
        if self.store is None:
            self.kv = TieredKVCache.from_config(self.kv_config(key_states))
            self.store = LayerStore(self.kv, self.num_layers, self._id)
        return self.store

    def close(self) -> None:
        """Release the tiers (worker threads, files); the disk tier's blocks stay for a restart."""
        if self.kv is not None:
            self.kv.close()
            self.kv, self.store = None, None


def _check_kv_config(kv_config: KVTierConfig, num_kv_heads: int, head_dim: int) -> None:
    layout = kv_config.layout
    if (layout.num_layers, layout.num_kv_heads, layout.head_dim) != (1, num_kv_heads, head_dim):
        raise ValueError(f"kv_config's layout has {layout.num_layers} layers, {layout.num_kv_heads} KV heads and "
                         f"head_dim {layout.head_dim}; TieredCache needs num_layers=1 (one model layer per block), "
                         f"num_kv_heads={num_kv_heads} and head_dim={head_dim} for this model")


class TieredLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]
    """One model layer of a TieredCache (transformers' cache-layer interface)."""

    is_sliding = False
    is_croppable = True
    is_compileable = False

    def __init__(self, owner: TieredCache, index: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.owner, self.index = owner, index

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.owner._open(key_states)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        store = self._store()
        if self.index == 0 and key_states.shape[-2] > 1:
            self.owner.reused_tokens = store.num_tokens(0)
        out = store.append(self.index, key_states, value_states)
        prefetch = self.owner.prefetch_layers
        if prefetch or (prefetch is None and key_states.is_cuda):  # NOTE: the next layer's blocks come back meanwhile
            store.prefetch((self.index + 1) % self.owner.num_layers)
        return out

    def _store(self) -> LayerStore:
        store = self.owner.store
        if store is None:
            raise RuntimeError("this TieredCache was closed")
        return store

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self._store().num_tokens(self.index) if self.is_initialized else 0

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:
        """Nothing to do: the tiers move blocks themselves."""

    def prefetch(self) -> None:
        """Nothing to do: a layer's blocks are read back when it updates."""

    def reset(self) -> None:
        if self.is_initialized:
            self._store().clear(self.index)

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` tokens (transformers' convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove and self.is_initialized:
            store = self._store()
            store.truncate(self.index, max(store.num_tokens(self.index) + tokens_to_remove, 0))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select(beam_idx.tolist())

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        rows = indices.nonzero().flatten() if indices.dtype == torch.bool else indices
        self._select(rows.tolist())

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            rows = self._store().num_rows(self.index)
            self._select([row for row in range(rows) for _ in range(repeats)])

    def _select(self, rows: list[int]) -> None:
        if self.is_initialized:
            self._store().select_rows(self.index, rows)
