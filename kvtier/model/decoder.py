"""Transformer: a Llama-family decoder (HF module names, so HF checkpoints load as they are) whose
every layer reads and writes its K/V in kvtier's DevicePool."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from kvtier.config import KVLayout, ModelConfig
from kvtier.model.attention import PagedAttention
from kvtier.model.batch import ForwardBatch
from kvtier.model.layers import MLP, Linear, RMSNorm, Rotary
from kvtier.tiers.device import DevicePool

if TYPE_CHECKING:
    from kvtier.parallel.pipeline import PipelineStage


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
    """`model.*` and `lm_head` as in HF's LlamaForCausalLM / Qwen2ForCausalLM.

    Under tensor or pipeline parallelism (kvtier/parallel) a rank's Transformer holds its layers
    and heads only: `layer_range` and `kv_head_range` say which of the model's, `stage` passes
    activations between pipeline stages, and `kv_fingerprint` keeps the whole model's fingerprint
    (block hashes must not depend on the parallel layout).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.layer_range = (0, config.num_layers)
        self.kv_head_range = (0, config.num_kv_heads)
        self.stage: PipelineStage | None = None
        self.kv_fingerprint: str | None = None

    def kv_layout(self, block_size: int = 16, dtype: torch.dtype | None = None) -> KVLayout:
        """The layout of the K/V this Transformer computes: every layer and KV head, or its rank's shard."""
        (first_layer, end_layer), (first_head, end_head) = self.layer_range, self.kv_head_range
        return KVLayout(num_layers=end_layer - first_layer, num_kv_heads=end_head - first_head,
                        head_dim=self.config.head_dim, block_size=block_size, dtype=dtype or self.config.dtype,
                        first_layer=first_layer, first_kv_head=first_head)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, pool: DevicePool) -> torch.Tensor:
        """One step: every sequence's chunk through every layer; logits `[batch, vocab]` (float32)
        of each sequence's last new token (on every rank of a parallel layout)."""
        stage = self.stage
        if stage is None or stage.is_first:
            x = self.model.embed_tokens(batch.token_ids)  # [num_tokens, hidden]
        else:
            x = stage.receive((batch.token_ids.shape[0], self.config.hidden_size), self.lm_head.weight.dtype)
        rope = self.model.rotary.cos_sin(batch.positions, x.dtype)  # NOTE: the same for every layer
        for index, layer in enumerate(self.model.layers):
            x = layer(x, batch, pool.k_cache(index), pool.v_cache(index), rope)
        if stage is not None and not stage.is_last:
            stage.send(x)
            return stage.share_logits(None, (batch.logits_indices.shape[0], self.config.vocab_size))
        x = self.model.norm(x[batch.logits_indices])
        logits: torch.Tensor = self.lm_head(x).float()  # [batch, vocab]
        return logits if stage is None else stage.share_logits(logits, tuple(logits.shape))
