import pytest
import torch

from kvtier.config import (
    DeviceTierConfig,
    DiskTierConfig,
    HostTierConfig,
    KVLayout,
    KVTierConfig,
    ModelConfig,
    SharedTierConfig,
    parse_dtype,
)


def layout(**overrides):
    fields = dict(num_layers=32, num_kv_heads=8, head_dim=128, block_size=16, dtype=torch.bfloat16)
    return KVLayout(**{**fields, **overrides})


def test_llama3_8b_block_is_2_mib():
    spec = ModelConfig.preset("llama-3-8b").kv_layout(block_size=16)
    assert spec == layout()
    assert spec.layer_page_size_bytes == 2 * 16 * 8 * 128 * 2
    assert spec.page_size_bytes == 2 * 1024 * 1024
    assert spec.bytes_per_token * 16 == spec.page_size_bytes
    assert spec.block_shape == (32, 2, 8, 16, 128)


@pytest.mark.parametrize("field", ["num_layers", "num_kv_heads", "head_dim", "block_size"])
@pytest.mark.parametrize("bad", [0, -1])
def test_zero_or_negative_sizes_name_field_and_value(field, bad):
    with pytest.raises(ValueError, match=rf"KVLayout.{field} must be >= 1, got {bad}"):
        layout(**{field: bad})


@pytest.mark.parametrize("bad", [16.0, "16", True, None])
def test_block_size_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"KVLayout.block_size must be a positive integer, got"):
        layout(block_size=bad)


@pytest.mark.parametrize("bad", [torch.int8, "bfloat16", torch.float64])
def test_unsupported_dtype_is_refused(bad):
    with pytest.raises(ValueError, match="dtype must be"):
        layout(dtype=bad)


def test_dict_round_trip_and_aliases():
    spec = layout()
    assert KVLayout.from_dict(spec.to_dict()) == spec
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        parse_dtype("int4")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model preset 'llama3-8b'; choose one of \["):
        ModelConfig.preset("llama3-8b")


def test_model_heads_must_divide():
    with pytest.raises(ValueError, match=r"num_heads \(6\) must be a multiple of num_kv_heads \(4\)"):
        ModelConfig(name="x", num_layers=1, num_heads=6, num_kv_heads=4, head_dim=8, hidden_size=48,
                    intermediate_size=96, vocab_size=10)


def test_full_config_from_dict_validates_every_part():
    cfg = KVTierConfig.from_dict({"layout": layout().to_dict(), "device": {"num_blocks": 8},
                                  "tiers": [{"kind": "disk", "path": "/tmp/x", "capacity_bytes": 1 << 20}]})
    assert cfg.tiers[0].codec == "raw" and cfg.device.device == "cpu"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="DeviceTierConfig.num_blocks must be >= 1, got 0"):
        DeviceTierConfig(num_blocks=0)
    with pytest.raises(ValueError, match="DiskTierConfig.codec must be 'raw' or 'zstd', got 'lz4'"):
        DiskTierConfig(path="/tmp/x", capacity_bytes=1, codec="lz4")
    with pytest.raises(ValueError, match="HostTierConfig.num_blocks must be >= 1, got -1"):
        HostTierConfig(num_blocks=-1)
    with pytest.raises(ValueError, match="DiskTierConfig.min_free_bytes must be an integer >= 0, got -1"):
        DiskTierConfig(path="/tmp/x", capacity_bytes=1, min_free_bytes=-1)


def test_tiers_compose_fastest_first_with_distinct_folders():
    disk, host = DiskTierConfig(path="/tmp/x", capacity_bytes=1), HostTierConfig(num_blocks=2)
    device = DeviceTierConfig(num_blocks=4)
    with pytest.raises(ValueError, match=r"tiers\[1\] is a host tier; a host tier can only be the first"):
        KVTierConfig(layout=layout(), device=device, tiers=(disk, host))
    with pytest.raises(ValueError, match=r"tiers\[1\].path '/tmp/x/' is used by an earlier tier"):
        KVTierConfig(layout=layout(), device=device, tiers=(disk, SharedTierConfig(path="/tmp/x/", capacity_bytes=1)))
    with pytest.raises(ValueError, match=r"file_mode must be permission bits .* got 256"):
        DiskTierConfig(path="/tmp/x", capacity_bytes=1, file_mode=0o400)


def test_model_fingerprint_covers_dims_dtype_and_weights():
    from dataclasses import replace

    from kvtier.config import model_fingerprint
    base = ModelConfig.preset("llama-3-8b")
    prints = {model_fingerprint(base, "sha:1"), model_fingerprint(base, "sha:2"),
              model_fingerprint(replace(base, dtype=torch.float16), "sha:1"),
              model_fingerprint(replace(base, rope_theta=10000.0), "sha:1")}
    assert len(prints) == 4 and model_fingerprint(base, "sha:1") == model_fingerprint(base, "sha:1")
    with pytest.raises(ValueError, match="weights_id must be a non-empty string"):
        model_fingerprint(base, "")


@pytest.mark.parametrize("field", ["fsync", "tmpfile", "native_io"])
@pytest.mark.parametrize("bad", ["no", 0, None])
def test_disk_switches_must_be_booleans(field, bad):
    with pytest.raises(ValueError, match=rf"DiskTierConfig.{field} must be True or False, got {bad!r}"):
        DiskTierConfig(path="/tmp/x", capacity_bytes=1, **{field: bad})
