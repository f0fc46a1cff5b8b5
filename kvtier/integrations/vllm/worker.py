"""The worker-side half: copies between vLLM's KV pages and the shared host slots, off vLLM's thread.

`submit_store` / `submit_load` queue a job and return at once; one copier thread runs the jobs in
order (copies are memory-bound: a second thread on the same cores gains nothing) and `get_finished`
reports the ones done. CPU pages only: GPU page formats are refused at start (pages.py).
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor, wait

import torch

from kvtier.config import KVLayout
from kvtier.integrations.vllm.pages import block_to_pages, pages_to_block
from kvtier.integrations.vllm.slab import HostSlab
from kvtier.integrations.vllm.vllm_api import (
    CanonicalKVCaches,
    GPULoadStoreSpec,
    OffloadingWorker,
    SlotSpec,
    TransferResult,
)


def layer_pages(kv_caches: CanonicalKVCaches, layout: KVLayout) -> list[torch.Tensor]:
    """One `[num_blocks, page_bytes]` tensor per layer of the single KV group, checked against `layout`.

    Raises:
        ValueError: more than one KV cache group, layers sharing a tensor, or pages of another size.
    """
    if len(kv_caches.group_data_refs) != 1:
        raise ValueError(f"kvtier's vLLM plug-in serves models with one KV cache group (full attention in "
                         f"every layer); this one has {len(kv_caches.group_data_refs)} (sliding-window or "
                         f"hybrid layers): use vLLM's CPUOffloadingSpec for it")
    refs = kv_caches.group_data_refs[0]
    if len({ref.tensor_idx for ref in refs}) != len(refs):
        raise ValueError("kvtier's vLLM plug-in needs one KV tensor per layer; this vLLM build shares them")
    if len(refs) != layout.num_layers:
        raise ValueError(f"vLLM reports {len(refs)} KV layers, the layout {layout.num_layers}")
    for ref in refs:
        if ref.page_size_bytes != layout.layer_page_size_bytes:
            raise ValueError(f"a vLLM page is {ref.page_size_bytes} bytes, but {layout.num_kv_heads} KV heads x "
                             f"{layout.block_size} tokens x {layout.head_dim} x 2 of {layout.dtype} make "
                             f"{layout.layer_page_size_bytes}: a KV layout kvtier does not know")
    return [kv_caches.tensors[ref.tensor_idx].tensor for ref in refs]


class KVTierWorker(OffloadingWorker):  # type: ignore[misc]  # vLLM is untyped
    """vLLM's OffloadingWorker between its KV pages and a HostSlab."""

    def __init__(self, slab: HostSlab, pages: list[torch.Tensor], layout: KVLayout) -> None:
        self.slab, self.pages, self.layout = slab, pages, layout
        self._copier = ThreadPoolExecutor(1, thread_name_prefix="kvtier-vllm-copy")
        self._jobs: dict[int, Future[TransferResult]] = {}

    def submit_store(self, job_id: int, src_spec: GPULoadStoreSpec, dst_spec: SlotSpec) -> bool:
        self._jobs[job_id] = self._copier.submit(self._store, job_id, src_spec.block_ids.tolist(),
                                                 dst_spec.block_ids.tolist())
        return True

    def submit_load(self, job_id: int, src_spec: SlotSpec, dst_spec: GPULoadStoreSpec) -> bool:
        self._jobs[job_id] = self._copier.submit(self._load, job_id, src_spec.block_ids.tolist(),
                                                 dst_spec.block_ids.tolist())
        return True

    def _store(self, job_id: int, block_ids: list[int], slots: list[int]) -> TransferResult:
        start = time.perf_counter()
        if len(block_ids) != len(slots):
            raise ValueError(f"store job {job_id}: {len(block_ids)} vLLM blocks for {len(slots)} slots")
        for block_id, slot in zip(block_ids, slots):
            pages_to_block(self.pages, block_id, self.slab.slot(slot), self.layout)
        return TransferResult(job_id, True, len(slots) * self.slab.slot_bytes, time.perf_counter() - start)

    def _load(self, job_id: int, slots: list[int], block_ids: list[int]) -> TransferResult:
        start = time.perf_counter()
        if len(block_ids) != len(slots):
            raise ValueError(f"load job {job_id}: {len(slots)} slots for {len(block_ids)} vLLM blocks")
        for slot, block_id in zip(slots, block_ids):
            block_to_pages(self.slab.slot(slot), self.pages, block_id, self.layout)
        return TransferResult(job_id, True, len(slots) * self.slab.slot_bytes, time.perf_counter() - start)

    def get_finished(self) -> list[TransferResult]:
        done = [job_id for job_id, future in self._jobs.items() if future.done()]
        # NOTE: a copy that raised is a bug in kvtier or a vLLM change; vLLM asserts success, so it stops the engine
        return [self._jobs.pop(job_id).result() for job_id in done]

    def wait(self, job_ids: set[int]) -> None:
        wait([self._jobs[job_id] for job_id in job_ids if job_id in self._jobs])

    def shutdown(self) -> None:
        self._copier.shutdown(wait=True)
        self.slab.unlink()
