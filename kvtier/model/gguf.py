"""GGUF checkpoints (llama.cpp's format) read into HuggingFace names and a HF config, through the
`gguf` package (an optional extra: `pip install kvtier[gguf]`).

Tensors are dequantized with `gguf.quants.dequantize` to float32, then cast to the chosen dtype.
llama.cpp's converter permutes the rows of Llama's q and k projections (its RoPE rotates adjacent
pairs, HF's rotates halves); `unpermute_rows` undoes that, so the weights equal what
transformers' own GGUF loader produces. Qwen2 files are not permuted. The metadata becomes a
`config.json`-style dict, so the one HF path (`model_config_from_hf`) checks and refuses options.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from kvtier.config import dtype_name, parse_dtype
from kvtier.errors import UnsupportedModelError
from kvtier.model.decoder import Transformer
from kvtier.model.hf_config import model_config_from_hf
from kvtier.model.weights import from_state_dict

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")


def open_gguf(path: str | Path) -> Any:
    """A `gguf.GGUFReader` over `path` (memory-mapped; nothing is dequantized yet).

    Raises:
        UnsupportedModelError: the gguf package is missing, or the file is not a readable GGUF.
    """
    try:
        import gguf
    except ImportError as exc:
        raise UnsupportedModelError(f"cannot load {path}: the gguf package is missing; "
                                    "pip install 'kvtier[gguf]' (or pip install gguf)") from exc
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # NOTE: the reader raises ValueError, IndexError, OSError... on a bad file
        raise UnsupportedModelError(f"cannot read {path} as a GGUF file: {type(exc).__name__}: {exc}") from exc


def hf_config_from_gguf(reader: Any, dtype: str = "float32") -> dict[str, Any]:
    """The metadata of a GGUF file as a HF `config.json` dict (Llama or Qwen2 only).

    Raises:
        UnsupportedModelError: another architecture, a partial rotary, RoPE scaling, or a missing key.
    """
    arch = str(_field(reader, "general.architecture"))
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported; the reference decoder runs "
                                    f"{sorted(ARCHITECTURES)}")
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // heads))
    rotary = int(_field(reader, f"{arch}.rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise UnsupportedModelError(f"partial rotary embeddings ({rotary} of {head_dim} dims) are not supported")
    scaling = str(_field(reader, f"{arch}.rope.scaling.type", "none"))
    names = {t.name for t in reader.tensors}
    if scaling != "none" or "rope_freqs.weight" in names:
        raise UnsupportedModelError(f"GGUF RoPE scaling ({scaling!r}, rope_freqs) is not supported; "
                                    "load the HuggingFace folder of this model instead")
    vocab = _field(reader, f"{arch}.vocab_size", None)
    if vocab is None:
        vocab = len(_field(reader, "tokenizer.ggml.tokens"))
    eos = sorted({int(_field(reader, key)) for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
                  if key in reader.fields})
    return {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch, "hidden_size": hidden,
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", heads)), "head_dim": head_dim,
        "vocab_size": int(vocab), "max_position_embeddings": int(_field(reader, f"{arch}.context_length")),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        "tie_word_embeddings": "output.weight" not in names, "hidden_act": "silu", "torch_dtype": dtype,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id", None),
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
    }


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (pairs -> halves within each head), as transformers does."""
    half = weight.shape[0] // num_heads // 2
    out: np.ndarray = weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    return out


def gguf_tensors(reader: Any, config: dict[str, Any], dtype: torch.dtype,
                 progress: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the file under its HF name, dequantized and cast to `dtype`.

    Raises:
        UnsupportedModelError: a tensor name this decoder has no place for, or a quantization the
            gguf package cannot dequantize.
    """
    from gguf.quants import dequantize

    permute = config["model_type"] == "llama"
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    state: dict[str, torch.Tensor] = {}
    for tensor in tqdm(reader.tensors, desc="dequantizing", unit="tensor", disable=not progress, leave=False):
        name, kind = _hf_name(tensor.name)
        try:
            array = dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, ValueError) as exc:
            raise UnsupportedModelError(f"cannot dequantize {tensor.name} ({tensor.tensor_type.name}): {exc}") from exc
        array = array.reshape([int(n) for n in reversed(tensor.shape)])  # NOTE: GGUF lists dims innermost first
        if permute and kind in heads:
            array = unpermute_rows(array, heads[kind])
        state[name] = torch.from_numpy(np.require(array, np.float32, ["C", "W"])).to(dtype)  # W: copies the mmap'd F32s
    return state


def load_gguf_model(path: str | Path, *, dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu",
                    progress: bool = False) -> Transformer:
    """The model in a GGUF file, dequantized to `dtype` (default float32), without writing anything.

    Raises:
        UnsupportedModelError: see `open_gguf`, `hf_config_from_gguf` and `gguf_tensors`.
    """
    reader = open_gguf(path)
    config = hf_config_from_gguf(reader, dtype_name(parse_dtype(dtype or "float32")))
    model_config = model_config_from_hf(config, name=Path(path).stem)
    return from_state_dict(model_config, gguf_tensors(reader, config, model_config.dtype, progress), device=device)


def _hf_name(gguf_name: str) -> tuple[str, str]:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name], gguf_name
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match is None or match[2] not in _LAYER_NAMES:
        raise UnsupportedModelError(f"GGUF tensor {gguf_name!r} has no place in the reference decoder")
    return f"model.layers.{match[1]}.{_LAYER_NAMES[match[2]]}.{match[3]}", match[2]


def _field(reader: Any, key: str, default: Any = ...) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise UnsupportedModelError(f"GGUF metadata has no {key!r}; the file is incomplete or not a decoder")
        return default
    return field.contents()
