"""Model configs and weights at the edge: HF config spellings, refusals by name, checkpoint checks,
seeded presets and the weights digest in the fingerprint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kvtier.config import ModelConfig, RopeScaling
from kvtier.errors import UnsupportedModelError
from kvtier.model.hf_config import model_config_from_hf
from kvtier.model.weights import fingerprint, from_state_dict, load_hf_folder, random_model, weights_digest

HF = {"architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64, "intermediate_size": 96,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
      "max_position_embeddings": 512, "dtype": "bfloat16", "eos_token_id": [2, 7]}


def test_both_transformers_spellings_of_rope_map_onto_the_config() -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    v5 = model_config_from_hf({**HF, "rope_parameters": {**scaling, "rope_theta": 5e5}}, name="m")
    v4 = model_config_from_hf({**HF, "rope_theta": 5e5, "rope_scaling": {**scaling, "type": "llama3"}}, name="m")
    assert v5 == v4 and v5.rope_theta == 5e5 and v5.dtype == torch.bfloat16 and v5.head_dim == 16
    assert v5.rope_scaling == RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=64)
    assert v5.eos_token_ids == (2, 7) and not v5.qkv_bias
    qwen = model_config_from_hf({**HF, "architectures": ["Qwen2ForCausalLM"]}, name="q", dtype="float32")
    assert qwen.qkv_bias and qwen.dtype == torch.float32


@pytest.mark.parametrize(("change", "message"), [
    ({"architectures": ["GPT2LMHeadModel"]}, r"architecture \['GPT2LMHeadModel'\] is not supported"),
    ({"use_sliding_window": True}, "sliding-window attention is not supported"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "layer types"),
    ({"attention_bias": True}, "attention_bias=True"),
    ({"mlp_bias": True}, "mlp_bias=True"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "RoPE type 'yarn' is not supported"),
])
def test_what_the_decoder_cannot_run_is_refused_by_name(change: dict[str, object], message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=message):
        model_config_from_hf({**HF, **change}, name="m")


def tiny() -> ModelConfig:
    return ModelConfig.preset("tiny")


def test_checkpoints_that_do_not_match_the_config_are_refused(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in random_model(tiny()).state_dict().items()}
    del state["model.norm.weight"]
    state["model.layers.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(UnsupportedModelError, match=r"missing \['model.norm.weight'\], unexpected "
                                                    r"\['model.layers.0.extra.weight'\]"):
        from_state_dict(tiny(), state)
    with pytest.raises(UnsupportedModelError, match="has no config.json"):
        load_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(HF))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UnsupportedModelError, match="pickled .bin weights are never loaded"):
        load_hf_folder(tmp_path)


def test_a_sharded_folder_loads_like_one_file(tmp_path: Path) -> None:
    model = random_model(model_config_from_hf(HF, name="m", dtype="float32"), seed=3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    (tmp_path / "config.json").write_text(json.dumps(HF))
    save_file({k: state[k] for k in names[:5]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in names[5:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    loaded = load_hf_folder(tmp_path, dtype="float32")
    assert weights_digest(loaded) == weights_digest(model)


def test_presets_are_seeded_and_the_fingerprint_names_the_weights() -> None:
    a, b, c = random_model(tiny(), seed=0), random_model(tiny(), seed=0), random_model(tiny(), seed=1)
    assert weights_digest(a) == weights_digest(b) != weights_digest(c)
    assert fingerprint(a) != fingerprint(c) and "weights=xxh3_128:" in fingerprint(a)
    assert a.model.layers[0].input_layernorm.weight.eq(1).all()
