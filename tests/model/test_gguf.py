"""GGUF files into the decoder: small files written here with gguf's own writer the way llama.cpp's
converter writes them (q/k rows permuted for Llama, not for Qwen2), read back to the original
weights; hostile files refused by a typed error; the converted folder built once, atomically."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kvtier.errors import UnsupportedModelError
from kvtier.model.gguf import load_gguf_model, unpermute_rows
from kvtier.model.gguf_folder import converted_folder
from kvtier.model.weights import load_hf_folder, weights_digest

gguf = pytest.importorskip("gguf")

DIMS = dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=96, vocab=128)
_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def llama_cpp_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (halves -> interleaved pairs)."""
    return (weights.reshape(num_heads, 2, weights.shape[0] // num_heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def hf_state(arch: str, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, hd = DIMS["hidden"], DIMS["hidden"] // DIMS["heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (DIMS["vocab"], d), "model.norm.weight": (d,)}
    if not tied:
        shapes["lm_head.weight"] = (DIMS["vocab"], d)
    for i in range(DIMS["layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                   p + "self_attn.q_proj.weight": (DIMS["heads"] * hd, d),
                   p + "self_attn.k_proj.weight": (DIMS["kv_heads"] * hd, d),
                   p + "self_attn.v_proj.weight": (DIMS["kv_heads"] * hd, d),
                   p + "self_attn.o_proj.weight": (d, DIMS["heads"] * hd),
                   p + "mlp.gate_proj.weight": (DIMS["ffn"], d), p + "mlp.up_proj.weight": (DIMS["ffn"], d),
                   p + "mlp.down_proj.weight": (d, DIMS["ffn"])}
        if arch == "qwen2":
            shapes |= {p + f"self_attn.{x}_proj.bias": (n * hd,)
                       for x, n in (("q", DIMS["heads"]), ("k", DIMS["kv_heads"]), ("v", DIMS["kv_heads"]))}
    return {name: rng.standard_normal(shape).astype(np.float32) * 0.1 for name, shape in shapes.items()}


def gguf_name(hf_name: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER[module]}.{kind}"


def write_gguf(path: Path, arch: str = "llama", *, tied: bool = False, qtype: Any = None,
               state: dict[str, np.ndarray] | None = None, **metadata: Any) -> dict[str, np.ndarray]:
    """A GGUF file of `state` (default: `hf_state`), permuted and named as llama.cpp writes it."""
    state = state if state is not None else hf_state(arch, tied)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(DIMS["layers"])
    writer.add_context_length(metadata.pop("context_length", 256))
    writer.add_embedding_length(DIMS["hidden"])
    writer.add_feed_forward_length(DIMS["ffn"])
    writer.add_head_count(DIMS["heads"])
    writer.add_head_count_kv(DIMS["kv_heads"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(DIMS["vocab"])
    writer.add_rope_dimension_count(metadata.pop("rope_dims", DIMS["hidden"] // DIMS["heads"]))
    writer.add_eos_token_id(3)
    for key, value in metadata.items():
        writer.add_string(key, value)
    heads = {"attn_q": DIMS["heads"], "attn_k": DIMS["kv_heads"]}
    for name, array in state.items():
        target = gguf_name(name)
        kind = target.split(".")[-2]
        if arch == "llama" and kind in heads:
            array = llama_cpp_permute(array, heads[kind])
        if qtype is not None and array.ndim == 2:
            writer.add_tensor(target, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(target, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


@pytest.mark.parametrize(("arch", "tied"), [("llama", False), ("llama", True), ("qwen2", True)])
def test_float32_files_come_back_as_the_original_hf_weights(tmp_path: Path, arch: str, tied: bool) -> None:
    state = write_gguf(tmp_path / "m.gguf", arch, tied=tied)
    model = load_gguf_model(tmp_path / "m.gguf")
    assert model.config.tie_word_embeddings is tied and model.config.qkv_bias is (arch == "qwen2")
    assert model.config.eos_token_ids == (3,) and model.config.dtype == torch.float32
    loaded = model.state_dict()
    for name, array in state.items():
        torch.testing.assert_close(loaded[name], torch.from_numpy(array), rtol=0, atol=0, msg=name)


def test_quantized_tensors_are_dequantized_then_unpermuted(tmp_path: Path) -> None:
    q8 = gguf.GGMLQuantizationType.Q8_0
    state = write_gguf(tmp_path / "m.gguf", "llama", qtype=q8)
    loaded = load_gguf_model(tmp_path / "m.gguf", dtype="bfloat16").state_dict()
    name = "model.layers.1.self_attn.k_proj.weight"
    permuted = llama_cpp_permute(state[name], DIMS["kv_heads"])
    want = unpermute_rows(gguf.quants.dequantize(gguf.quants.quantize(permuted, q8), q8), DIMS["kv_heads"])
    assert loaded[name].dtype == torch.bfloat16
    torch.testing.assert_close(loaded[name], torch.from_numpy(want).to(torch.bfloat16), rtol=0, atol=0)
    assert not torch.equal(loaded[name].float(), torch.from_numpy(permuted).to(torch.bfloat16).float())


def test_unpermute_inverts_llama_cpp_permute() -> None:
    rows = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    assert np.array_equal(unpermute_rows(llama_cpp_permute(rows, 8), 8), rows)


@pytest.mark.parametrize(("damage", "message"), [
    ("truncate", "cannot read .* as a GGUF file"),
    ("garbage", "cannot read .* as a GGUF file"),
    ("empty", "cannot read .* as a GGUF file"),
])
def test_damaged_files_are_a_typed_error(tmp_path: Path, damage: str, message: str) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(UnsupportedModelError, match=message):
        load_gguf_model(path)


def test_what_the_decoder_cannot_run_is_refused_before_dequantizing(tmp_path: Path) -> None:
    write_gguf(tmp_path / "partial.gguf", rope_dims=8)
    with pytest.raises(UnsupportedModelError, match="partial rotary"):
        load_gguf_model(tmp_path / "partial.gguf")
    write_gguf(tmp_path / "yarn.gguf", **{"llama.rope.scaling.type": "yarn"})
    with pytest.raises(UnsupportedModelError, match="RoPE scaling"):
        load_gguf_model(tmp_path / "yarn.gguf")
    state = hf_state("llama", tied=False)
    del state["model.norm.weight"]
    write_gguf(tmp_path / "missing.gguf", state=state)
    with pytest.raises(UnsupportedModelError, match=r"missing \['model.norm.weight'\]"):
        load_gguf_model(tmp_path / "missing.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="GGUF architecture 'gpt2' is not supported"):
        load_gguf_model(tmp_path / "gpt2.gguf")


def test_the_converted_folder_is_built_once_and_loads_the_same_weights(tmp_path: Path) -> None:
    source = tmp_path / "m.gguf"
    write_gguf(source, "llama", tied=True)
    folder = converted_folder(source, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "models" / "m-float32"
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert weights_digest(load_hf_folder(folder)) == weights_digest(load_gguf_model(source))
    inode = (folder / "model.safetensors").stat().st_ino
    assert converted_folder(source, tmp_path / "cache") == folder
    assert (folder / "model.safetensors").stat().st_ino == inode  # current: not converted again
    assert [p.name for p in folder.parent.iterdir()] == ["m-float32"]


def test_a_changed_source_is_converted_again_and_stale_builds_are_removed(tmp_path: Path) -> None:
    source, cache = tmp_path / "m.gguf", tmp_path / "cache"
    write_gguf(source, "llama")
    folder = converted_folder(source, cache)
    stale = cache / "models" / ".m-float32.build-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    hour_ago = time.time() - 7200
    os.utime(stale, (hour_ago, hour_ago))
    fresh = cache / "models" / ".m-float32.build-running"
    fresh.mkdir()  # a conversion still running in another process: left alone
    write_gguf(source, "llama", state=hf_state("llama", tied=False, seed=1))
    before = weights_digest(load_hf_folder(folder))
    assert converted_folder(source, cache) == folder
    assert weights_digest(load_hf_folder(folder)) != before
    assert weights_digest(load_hf_folder(folder)) == weights_digest(load_gguf_model(source))
    assert sorted(p.name for p in (cache / "models").iterdir()) == [".m-float32.build-running", "m-float32"]


def test_a_failed_conversion_leaves_no_folder(tmp_path: Path) -> None:
    source = tmp_path / "m.gguf"
    state = hf_state("llama", tied=False)
    state["model.layers.0.extra.weight"] = np.zeros((2, 2), np.float32)
    _LAYER["extra"] = "extra_tensor"
    try:
        write_gguf(source, state=state)
    finally:
        del _LAYER["extra"]
    with pytest.raises(UnsupportedModelError, match="'blk.0.extra_tensor.weight' has no place"):
        converted_folder(source, tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []
