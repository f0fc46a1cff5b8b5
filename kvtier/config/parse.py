"""Configs from plain data, at the edges only: a TOML file (the CLI's `--config FILE`) or a dict.

    [layout]                      # a model preset and a block size ...
    model = "llama-3-8b"
    block_size = 16               # ... or KVLayout's fields: num_layers, num_kv_heads, head_dim, dtype
    [device]
    num_blocks = 4096
    device = "cuda"
    [[tiers]]                     # fastest first
    kind = "host"                 # host | disk | shared
    num_blocks = 8192
    [[tiers]]
    kind = "disk"
    path = "/mnt/nvme/kv"
    capacity_bytes = "500GiB"     # byte sizes: an integer, or a string with a unit
    [transfer]
    num_workers = 4

Unknown keys and misspelt tables are refused, naming where they are and what is allowed.
"""
from __future__ import annotations

import dataclasses
import re
import sys
from typing import Any

from kvtier.config.cache import KVTierConfig, TransferConfig
from kvtier.config.checks import parse_dtype
from kvtier.config.model import KVLayout, ModelConfig
from kvtier.config.tiers import (
    DeviceTierConfig,
    DiskTierConfig,
    HostTierConfig,
    RemoteTierConfig,
    SharedTierConfig,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TIER_KINDS: dict[str, type] = {"host": HostTierConfig, "disk": DiskTierConfig, "shared": SharedTierConfig,
                               "remote": RemoteTierConfig}
BYTE_FIELDS = {"capacity_bytes", "min_free_bytes", "max_inflight_write_bytes", "landing_bytes"}
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str) -> int:
    """`1500000`, `512MiB`, `2G`, `1.5GiB` -> bytes; ValueError for anything else, a fraction of a byte included."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?(?:ib)?)\s*", str(text).lower())
    if match is None or match.group(2) not in _UNITS:
        raise ValueError(f"not a byte count: {text!r} (examples: 1000000, 512MiB, 2G)")
    number, unit = match.group(1), _UNITS[match.group(2)]
    whole, _, fraction = number.partition(".")
    numerator, denominator = int(whole + fraction) * unit, 10 ** len(fraction)
    if numerator % denominator:
        raise ValueError(f"not a whole number of bytes: {text!r} is {numerator / denominator} bytes")
    return int(numerator // denominator)


def config_from_toml(path: str) -> KVTierConfig:
    """The KVTierConfig a TOML file describes (see the module docstring).

    Raises:
        ValueError: the file is not valid TOML, or a table or value breaks a rule (named in the message).
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return config_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def config_from_dict(data: dict[str, Any]) -> KVTierConfig:
    """The KVTierConfig plain data describes: tables `layout`, `device`, `tiers` (a list) and `transfer`."""
    _check_keys("the top level", data, {"layout", "device", "tiers", "transfer"}, required={"layout", "device"})
    tiers = data.get("tiers", [])
    if not isinstance(tiers, list):
        raise ValueError(f"[tiers] must be a list of tables ([[tiers]] in TOML), got {type(tiers).__name__}")
    return KVTierConfig(layout=_layout(data["layout"]), device=_build(DeviceTierConfig, "[device]", data["device"]),
                        tiers=tuple(tier_from_dict(f"[tiers][{i}]", t) for i, t in enumerate(tiers)),
                        transfer=_build(TransferConfig, "[transfer]", data.get("transfer", {})))


def _layout(data: Any) -> KVLayout:
    if not isinstance(data, dict):
        raise ValueError(f"[layout] must be a table, got {data!r}")
    if "model" in data:
        _check_keys("[layout]", data, {"model", "block_size", "dtype"}, required={"model"})
        model = ModelConfig.preset(data["model"])
        dtype = parse_dtype(data["dtype"]) if "dtype" in data else None
        return model.kv_layout(block_size=data.get("block_size", 16), dtype=dtype)
    fields = {f.name for f in dataclasses.fields(KVLayout)}
    _check_keys("[layout]", data, fields, required=fields - {"first_layer", "first_kv_head"})
    layout: KVLayout = _build(KVLayout, "[layout]", {**data, "dtype": parse_dtype(data["dtype"])})
    return layout


def tier_from_dict(where: str, data: Any) -> Any:
    """One tier's config from a table with a `kind` (host, disk, shared or remote); `where` names it in errors."""
    if not isinstance(data, dict) or data.get("kind") not in TIER_KINDS:
        kind = data.get("kind") if isinstance(data, dict) else data
        raise ValueError(f"{where}.kind must be one of {sorted(TIER_KINDS)}, got {kind!r}")
    fields = {k: v for k, v in data.items() if k != "kind"}
    return _build(TIER_KINDS[data["kind"]], f"{where} ({data['kind']} tier)", fields)


def _build(cls: type, where: str, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    _check_keys(where, data, names, required=required)
    try:
        return cls(**{k: parse_bytes(v) if k in BYTE_FIELDS and isinstance(v, str) else v for k, v in data.items()})
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _check_keys(where: str, data: dict[str, Any], allowed: set[str], *, required: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {sorted(allowed)}")
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r} (required: {sorted(required)})")
