"""Transformer: a Llama-family decoder (HF module names, so HF checkpoints load as they are) whose
every layer reads and writes its K/V in kvtier's DevicePool."""
from __future__ import annotations

import torch
from torch import nn

from kvtier.config import ModelConfig
from kvtier.model.attention import PagedAttention
from kvtier.model.batch import ForwardBatch
from kvtier.model.layers import MLP, Linear, RMSNorm, Rotary
from kvtier.tiers.device import DevicePool


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.self_attn = PagedAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, k_cache: torch.Tensor, v_cache: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), batch, k_cache, v_cache, rope)
        out: torch.Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return out


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.rotary = Rotary(config)  # NOTE: one for every layer; a buffer, not in the state dict


class Transformer(nn.Module):
    """`model.*` and `lm_head` as in HF's LlamaForCausalLM / Qwen2ForCausalLM."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, pool: DevicePool) -> torch.Tensor:
        """One step: every sequence's chunk through every layer; logits `[batch, vocab]` (float32)
        of each sequence's last new token."""
        x = self.model.embed_tokens(batch.token_ids)  # [num_tokens, hidden]
        rope = self.model.rotary.cos_sin(batch.positions, x.dtype)  # NOTE: the same for every layer
        for index, layer in enumerate(self.model.layers):
            x = layer(x, batch, pool.k_cache(index), pool.v_cache(index), rope)
        x = self.model.norm(x[batch.logits_indices])
        logits: torch.Tensor = self.lm_head(x).float()  # [batch, vocab]
        return logits
