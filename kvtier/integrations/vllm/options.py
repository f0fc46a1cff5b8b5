"""What `kv_connector_extra_config["kvtier"]` may say, checked before vLLM allocates anything.

    kv_connector_extra_config={
        "spec_name": "KVTierSpec", "spec_module_path": "kvtier.integrations.vllm",
        "kvtier": {
            "host_bytes": "4GiB",             # shared-memory slots between vLLM's KV and the tiers
            "tier": {"kind": "disk", "path": "/mnt/nvme/kv", "capacity_bytes": "500GiB"},
            "salt": "tenant-a",               # a tenant's blocks are never another's hits
        },
    }

The tier table is the one `kvtier` TOML files use ([[tiers]]: disk or shared, with the same keys);
without one, blocks live only in host memory, as vLLM's own CPU offloading keeps them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvtier.config.parse import parse_bytes, tier_from_dict
from kvtier.config.tiers import DiskTierConfig, SharedTierConfig

DEFAULT_HOST_BYTES = 1 << 30
_KEYS = {"host_bytes", "host_dir", "tier", "salt", "model_id", "io_threads", "stats_file"}


@dataclass(frozen=True, slots=True, kw_only=True)
class VLLMTierOptions:
    """The plug-in's settings, from `kv_connector_extra_config["kvtier"]`.

    host_bytes: size of the slot file both vLLM processes map (the host tier); at least one block.
    host_dir: where that file lives (a tmpfs: /dev/shm).
    tier: the folder below host memory (disk: one writer; shared: several engines, NFS), or None.
    salt: a tenant's secret mixed into every object name; different salts never share a block.
    model_id: names the model in the namespace instead of vLLM's model path (two paths, one checkpoint).
    io_threads: threads reading and writing the folder.
    stats_file: where the scheduler process keeps its counters as JSON (rewritten when they change), or None.
    """

    host_bytes: int = DEFAULT_HOST_BYTES
    host_dir: str = "/dev/shm"
    tier: DiskTierConfig | SharedTierConfig | None = None
    salt: str | None = None
    model_id: str | None = None
    io_threads: int = 2
    stats_file: str | None = None

    @classmethod
    def from_extra_config(cls, extra: Any) -> VLLMTierOptions:
        """Raises ValueError naming the key, the value and what is allowed."""
        data = extra.get("kvtier", {}) if hasattr(extra, "get") else extra
        if not isinstance(data, dict):
            raise ValueError(f'kv_connector_extra_config["kvtier"] must be a dict, got {data!r}')
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ValueError(f'kv_connector_extra_config["kvtier"]: unknown key {unknown[0]!r}; '
                             f"allowed keys are {sorted(_KEYS)}")
        where = 'kv_connector_extra_config["kvtier"]'
        host_bytes = data.get("host_bytes", DEFAULT_HOST_BYTES)
        if isinstance(host_bytes, str):
            host_bytes = parse_bytes(host_bytes)
        if isinstance(host_bytes, bool) or not isinstance(host_bytes, int) or host_bytes <= 0:
            raise ValueError(f"{where}.host_bytes must be a byte count > 0 (e.g. 4GiB), got {host_bytes!r}")
        tier = None
        if data.get("tier") is not None:
            tier = tier_from_dict(f"{where}.tier", data["tier"])
            if not isinstance(tier, (DiskTierConfig, SharedTierConfig)):
                raise ValueError(f"{where}.tier.kind must be 'disk' or 'shared' (host memory is host_bytes), "
                                 f"got {data['tier'].get('kind')!r}")
        for name in ("host_dir", "salt", "stats_file"):
            if name in data and not isinstance(data[name], str):
                raise ValueError(f"{where}.{name} must be a string, got {data[name]!r}")
        model_id = data.get("model_id")
        if model_id is not None and (not isinstance(model_id, str) or not model_id):
            raise ValueError(f"{where}.model_id must be a non-empty string, got {model_id!r}")
        io_threads = data.get("io_threads", 2)
        if isinstance(io_threads, bool) or not isinstance(io_threads, int) or not 1 <= io_threads <= 64:
            raise ValueError(f"{where}.io_threads must be an integer in [1, 64], got {io_threads!r}")
        return cls(host_bytes=host_bytes, host_dir=data.get("host_dir", "/dev/shm"), tier=tier,
                   salt=data.get("salt"), model_id=model_id, io_threads=io_threads,
                   stats_file=data.get("stats_file"))
