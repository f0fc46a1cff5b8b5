import pytest
import torch

from kvtier.config import (
    CacheConfig,
    DiskTierConfig,
    KVLayout,
    KVTierConfig,
    ModelConfig,
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
    cfg = KVTierConfig.from_dict({"layout": layout().to_dict(), "cache": {"num_device_blocks": 8},
                                  "disk": [{"path": "/tmp/x", "capacity_bytes": 1 << 20}]})
    assert cfg.disk[0].codec == "raw" and cfg.cache.num_host_blocks == 0
    with pytest.raises(ValueError, match="CacheConfig.num_device_blocks must be >= 1, got 0"):
        CacheConfig(num_device_blocks=0)
    with pytest.raises(ValueError, match="DiskTierConfig.codec must be 'raw' or 'zstd', got 'lz4'"):
        DiskTierConfig(path="/tmp/x", capacity_bytes=1, codec="lz4")
    with pytest.raises(ValueError, match="CacheConfig.num_host_blocks must be an integer >= 0, got -1"):
        CacheConfig(num_device_blocks=1, num_host_blocks=-1)


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
