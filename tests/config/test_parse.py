"""Configs from TOML files and dicts: every table maps onto KVTierConfig, and every mistake is named."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kvtier.cache import TieredKVCache
from kvtier.cli.main import main
from kvtier.config import (
    DeviceTierConfig,
    DiskTierConfig,
    HostTierConfig,
    KVLayout,
    KVTierConfig,
    SharedTierConfig,
    TransferConfig,
)
from kvtier.config.parse import parse_bytes
from kvtier.types import TierKind

TOML = """
[layout]
model = "llama-3-8b"
block_size = 32

[device]
num_blocks = 64

[[tiers]]
kind = "host"
num_blocks = 16

[[tiers]]
kind = "disk"
path = "{root}/disk"
capacity_bytes = "1.5GiB"
fsync = false

[[tiers]]
kind = "shared"
path = "{root}/shared"
capacity_bytes = 1000000
file_mode = 0o640
dir_mode = 0o750

[transfer]
num_workers = 2
"""


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kvtier.toml"
    path.write_text(text.format(root=tmp_path))
    return str(path)


def test_toml_file_maps_onto_every_config(tmp_path: Path) -> None:
    config = KVTierConfig.from_toml(write_toml(tmp_path, TOML))
    assert config == KVTierConfig(
        layout=KVLayout(num_layers=32, num_kv_heads=8, head_dim=128, block_size=32, dtype=torch.bfloat16),
        device=DeviceTierConfig(num_blocks=64),
        tiers=(HostTierConfig(num_blocks=16),
               DiskTierConfig(path=f"{tmp_path}/disk", capacity_bytes=3 << 29, fsync=False),
               SharedTierConfig(path=f"{tmp_path}/shared", capacity_bytes=10**6, file_mode=0o640, dir_mode=0o750)),
        transfer=TransferConfig(num_workers=2))


def test_from_config_opens_every_tier_and_writes_through_to_shared_ones(tmp_path: Path) -> None:
    text = TOML.replace('model = "llama-3-8b"\nblock_size = 32', 'model = "tiny"\nblock_size = 4')
    cache = TieredKVCache.from_config(KVTierConfig.from_toml(write_toml(tmp_path, text)))
    try:
        assert [t.kind for t in cache.tiers] == [TierKind.HOST, TierKind.DISK, TierKind.SHARED]
        assert cache.write_through == [cache.tiers[2]] and cache.pool.num_blocks == 64
        assert cache.engine.max_inflight_write_bytes == TransferConfig().max_inflight_write_bytes
        assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o750
    finally:
        cache.close()


@pytest.mark.parametrize(("change", "message"), [
    (("[device]", "[devices]"), r"the top level: unknown key 'devices'; allowed keys are \['device', 'layout'"),
    (('kind = "host"', 'kind = "ram"'),
     r"\[tiers\]\[0\].kind must be one of \['disk', 'host', 'remote', 'shared'\], got 'ram'"),
    (("num_workers = 2", "workers = 2"), r"\[transfer\]: unknown key 'workers'; allowed keys are"),
    (('capacity_bytes = "1.5GiB"', 'capacity_bytes = "0.5"'), r"\[tiers\]\[1\] \(disk tier\): not a whole number"),
    (("fsync = false", 'fsync = "no"'), r"\[tiers\]\[1\] \(disk tier\): DiskTierConfig.fsync must be True or False"),
    (("num_blocks = 64", "num_blocks = 0"), r"\[device\]: DeviceTierConfig.num_blocks must be >= 1, got 0"),
    (('model = "llama-3-8b"', 'model = "llama3"'), r"unknown model preset 'llama3'"),
    (("num_blocks = 64", ""), r"\[device\]: missing key 'num_blocks'"),
    (("[transfer]", "[transfer"), r"is not valid TOML"),
])
def test_every_mistake_names_where_it_is_and_the_rule(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = TOML.replace(*change)
    assert text != TOML
    path = write_toml(tmp_path, text)
    with pytest.raises(ValueError, match=message) as refused:
        KVTierConfig.from_toml(path)
    assert path in str(refused.value)


def test_replay_runs_from_a_config_file_and_refuses_a_bad_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = TOML.replace('model = "llama-3-8b"\nblock_size = 32', 'model = "tiny"\nblock_size = 16')
    assert main(["bench", "replay", "--json", "--config", write_toml(tmp_path, text), "--conversations", "3", "--turns", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["tiers"]) == {"host", "disk", "shared"} and report["verified_blocks"] > 0
    with pytest.raises(SystemExit) as exited:
        main(["bench", "replay", "--config", write_toml(tmp_path, TOML.replace("[device]", "[devices]"))])
    assert exited.value.code == 2 and "unknown key 'devices'" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "expected"), [("1000", 1000), ("512MiB", 512 << 20), ("2G", 2 * 10**9),
                                                ("1.5GiB", 3 << 29), ("0.5k", 500), ("0", 0)])
def test_byte_counts_parse_exactly(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["0.5", "1.0001k", "lots", "-1", "1 KB", ""])
def test_fractions_of_a_byte_and_junk_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a (byte count|whole number of bytes)"):
        parse_bytes(text)
