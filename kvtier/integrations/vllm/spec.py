"""`KVTierSpec`: the class vLLM's OffloadingConnector loads by name (`spec_name` / `spec_module_path`)."""
from __future__ import annotations

from kvtier.config import KVLayout
from kvtier.config.checks import parse_dtype
from kvtier.integrations.vllm.manager import KVTierManager
from kvtier.integrations.vllm.options import VLLMTierOptions
from kvtier.integrations.vllm.pages import check_page_format
from kvtier.integrations.vllm.slab import HostSlab, slab_path, slot_stride
from kvtier.integrations.vllm.vllm_api import (
    CanonicalKVCaches,
    OffloadingConfig,
    OffloadingManager,
    OffloadingSpec,
    OffloadingWorker,
    current_kv_shape,
    page_format,
)
from kvtier.integrations.vllm.worker import KVTierWorker, layer_pages


class KVTierSpec(OffloadingSpec):  # type: ignore[misc]  # vLLM is untyped
    """kvtier's host slots and folder tier behind vLLM's OffloadingConnector (one engine, TP=PP=1).

    Raises (at engine start, before any request):
        ValueError: bad `kv_connector_extra_config["kvtier"]`, or an engine layout the plug-in does not
            serve (several KV groups, tensor/pipeline parallelism, offload blocks of several vLLM blocks).
    """

    def __init__(self, config: OffloadingConfig) -> None:
        super().__init__(config)
        self.options = VLLMTierOptions.from_extra_config(config.extra_config)
        parallel = config.parallel
        if parallel.world_size != 1:
            raise ValueError(f"kvtier's vLLM plug-in runs one worker per engine; this engine has "
                             f"{parallel.world_size} (tp {parallel.tp_size}, pp {parallel.pp_size}); run TP=PP=1, "
                             f"or kvtier's own engine (`kvtier generate --tp N`) for sharded caches")
        if len(config.groups) != 1:
            raise ValueError(f"kvtier's vLLM plug-in serves one KV cache group; this model has {len(config.groups)}")
        if self.blocks_per_chunk != 1 or self.tokens_per_block[0] != self.tokens_per_hash:
            raise ValueError(f"kvtier's vLLM plug-in stores one vLLM block per object: drop 'block_size' and "
                             f"'blocks_per_chunk' from kv_connector_extra_config (got {self.blocks_per_chunk} "
                             f"blocks of {self.tokens_per_block[0]} tokens per chunk)")
        self.slot_bytes = config.worker_kv_bytes_per_block
        self.num_slots = self.options.host_bytes // slot_stride(self.slot_bytes) if self.slot_bytes else 0
        self.path = slab_path(self.options.host_dir, config.engine_id, parallel.rank)
        self._manager: KVTierManager | None = None

    def get_manager(self) -> OffloadingManager:
        if self._manager is None:
            slab = HostSlab(self.path, self.num_slots, self.slot_bytes, create=False)
            self._manager = KVTierManager(slab, self.options, self.config.model.name)
        return self._manager

    def get_worker(self, kv_caches: CanonicalKVCaches) -> OffloadingWorker:
        num_kv_heads, head_size, block_size, dtype, cache_dtype = current_kv_shape()
        layout = KVLayout(num_layers=len(kv_caches.group_data_refs[0]) if kv_caches.group_data_refs else 0,
                          num_kv_heads=num_kv_heads, head_dim=head_size, block_size=block_size,
                          dtype=parse_dtype(dtype))
        check_page_format(page_format(layout.dtype, block_size, head_size, cache_dtype))
        pages = layer_pages(kv_caches, layout)
        slab = HostSlab(self.path, self.num_slots, self.slot_bytes, create=True)
        slab.prefault()
        slab.publish_layout(layout)
        return KVTierWorker(slab, pages, layout)
