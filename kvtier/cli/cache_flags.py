"""The cache flags `demo` and `generate` share, and the one place they map onto a KVTierConfig."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvtier.config import KVLayout, KVTierConfig


def add_cache_flags(parser: argparse.ArgumentParser, *, device_blocks: int | None, host_blocks: int) -> None:
    """The cache flags; `device_blocks` None: the command sizes the pool (set args.device_blocks first)."""
    from kvtier.cli.cache import byte_count

    parser.add_argument("--config", metavar="FILE", help="a TOML file describing the cache (kvtier/config/parse.py); "
                        "replaces the cache flags below")
    parser.add_argument("--device-blocks", type=int, default=device_blocks,
                        help=f"default {device_blocks if device_blocks is not None else 'just enough for one prompt'}")
    parser.add_argument("--host-blocks", type=int, default=host_blocks, help=f"0: no host tier (default {host_blocks})")
    parser.add_argument("--disk", metavar="DIR", help="disk tier folder (default: a temporary folder)")
    parser.add_argument("--disk-bytes", type=byte_count, default=256 << 20, metavar="BYTES",
                        help="disk tier budget (default 256MiB)")
    parser.add_argument("--no-disk", action="store_true", help="no disk tier")
    parser.add_argument("--remote", metavar="URL", help="a Redis/Valkey tier below the disk: redis://[:PASSWORD@]HOST:"
                        "PORT[/DB], rediss:// (TLS) or unix://PATH (password also from $KVTIER_REDIS_PASSWORD)")
    parser.add_argument("--remote-ca", metavar="PEM", help="with rediss://: the CA bundle that signed the server's "
                        "certificate (default: the system's CAs)")
    parser.add_argument("--remote-bytes", type=byte_count, default=1 << 30, metavar="BYTES",
                        help="what this process may keep in the remote tier (default 1GiB)")
    parser.add_argument("--device", default="cpu", help="where the device pool lives (default cpu)")


def cache_config(args: argparse.Namespace, layout: KVLayout, scratch: str) -> KVTierConfig:
    """The KVTierConfig of `--config FILE` (its layout must be `layout`), or of the cache flags.

    Raises:
        ValueError, OSError: the file or a flag breaks a rule (the message names it).
    """
    import os

    from kvtier.config import DeviceTierConfig, DiskTierConfig, HostTierConfig, KVTierConfig, RemoteTierConfig

    if args.config:
        config = KVTierConfig.from_toml(args.config)
        if config.layout != layout:
            raise ValueError(f"{args.config}: [layout] is {config.layout}, the model needs {layout}")
        return config
    tiers: list[Any] = [HostTierConfig(num_blocks=args.host_blocks)] if args.host_blocks else []
    if not args.no_disk:
        tiers.append(DiskTierConfig(path=args.disk or scratch, capacity_bytes=args.disk_bytes, fsync=False))
    if args.remote:
        tiers.append(RemoteTierConfig(url=args.remote, capacity_bytes=args.remote_bytes,
                                      password_env="KVTIER_REDIS_PASSWORD" if "KVTIER_REDIS_PASSWORD" in os.environ
                                      else None, tls_ca_file=args.remote_ca))
    return KVTierConfig(layout=layout, device=DeviceTierConfig(num_blocks=args.device_blocks, device=args.device),
                        tiers=tuple(tiers))
