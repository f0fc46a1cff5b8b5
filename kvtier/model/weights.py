"""Weights into the Transformer: from a HuggingFace folder (`config.json` + `*.safetensors`,
sharded or not), or seeded random for presets; and the digest that names them in the fingerprint."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import xxhash

from kvtier.config import ModelConfig, model_fingerprint
from kvtier.errors import UnsupportedModelError
from kvtier.model.decoder import Transformer
from kvtier.model.hf_config import model_config_from_hf

INIT_STD = 0.02  # HF's initializer_range for Llama


def load_hf_folder(path: str | Path, *, dtype: torch.dtype | str | None = None,
                   device: torch.device | str = "cpu") -> Transformer:
    """The model in a HF folder, its weights read with safetensors (never pickle).

    Raises:
        UnsupportedModelError: no config.json or safetensors, an unsupported architecture, or
            tensors that do not match the config (missing, unexpected or misshapen).
    """
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UnsupportedModelError(f"{folder} has no config.json; pass a HuggingFace model folder, a .gguf file "
                                    "or a preset name")
    config = model_config_from_hf(json.loads((folder / "config.json").read_text()), name=folder.name, dtype=dtype)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise UnsupportedModelError(f"{folder} has no *.safetensors weights (pickled .bin weights are never loaded)")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(shard)))
    return from_state_dict(config, state, device=device)


def from_state_dict(config: ModelConfig, state: dict[str, torch.Tensor], *,
                    device: torch.device | str = "cpu") -> Transformer:
    """A Transformer of `config` holding `state` (HF names), cast to `config.dtype`."""
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model = Transformer(config)
    expected = set(model.state_dict()) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise UnsupportedModelError(f"checkpoint does not match {config.name}: missing {missing[:5]}, "
                                    f"unexpected {unexpected[:5]} ({len(missing)} and {len(unexpected)} in all)")
    model.load_state_dict(state, strict=False)
    return model.to(device=device, dtype=config.dtype).eval()


def random_model(config: ModelConfig, *, seed: int = 0, device: torch.device | str = "cpu") -> Transformer:
    """A Transformer with seeded normal(0, 0.02) weights and unit norms (for presets and tests)."""
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * INIT_STD)
    return model.to(device=device, dtype=config.dtype).eval()


def weights_digest(model: Transformer) -> str:
    """xxh3_128 over every tensor's name, dtype, shape and bytes: names the exact weights.

    NOTE: xxh3 rather than sha256 because it runs at memory speed; it names weights a user
    chose to load, it does not defend against an adversary (the namespace digest is sha256).
    """
    state = xxhash.xxh3_128()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().contiguous().cpu().view(-1).view(torch.uint8)
        state.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        state.update(memoryview(flat.numpy()))
    return f"xxh3_128:{state.hexdigest()}"


def fingerprint(model: Transformer) -> str:
    """The model fingerprint (architecture, dims, dtype, weights digest) that roots its block hashes;
    a rank's shard of a parallel model gives the whole model's (taken before it was split)."""
    if model.kv_fingerprint is not None:
        return model.kv_fingerprint
    return model_fingerprint(model.config, weights_digest(model))
