"""The model a `--model` argument names: a preset (seeded random weights), a HuggingFace folder, or
a GGUF file; and its tokenizer when the folder ships one (transformers, an optional extra)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kvtier.config import ModelConfig
from kvtier.errors import UnsupportedModelError
from kvtier.model.decoder import Transformer
from kvtier.model.weights import load_hf_folder, random_model
from kvtier.presets import MODEL_PRESETS


def load_model(spec: str, *, dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu",
               seed: int = 0) -> Transformer:
    """A preset name, a HF folder (config.json + safetensors) or a .gguf file, on `device`.

    Raises:
        UnsupportedModelError: `spec` names none of these, or a model this decoder cannot run.
    """
    path = Path(spec)
    if spec in MODEL_PRESETS and not path.exists():
        config = ModelConfig.preset(spec)
        if dtype is not None:
            from kvtier.config import parse_dtype
            config = _with_dtype(config, parse_dtype(dtype))
        return random_model(config, seed=seed, device=device)
    if path.is_dir():
        return load_hf_folder(path, dtype=dtype, device=device)
    if path.is_file() and path.suffix == ".gguf":
        from kvtier.model.gguf import load_gguf_model

        return load_gguf_model(path, dtype=dtype, device=device)
    raise UnsupportedModelError(f"--model {spec!r} is neither a preset ({sorted(MODEL_PRESETS)}), a HuggingFace "
                                "folder (config.json + *.safetensors) nor a .gguf file")


def load_tokenizer(spec: str) -> Any | None:
    """The folder's tokenizer (transformers AutoTokenizer), or None without one or without transformers."""
    path = Path(spec)
    if not path.is_dir() or not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    return AutoTokenizer.from_pretrained(str(path))


def _with_dtype(config: ModelConfig, dtype: torch.dtype) -> ModelConfig:
    import dataclasses
    return dataclasses.replace(config, dtype=dtype)
