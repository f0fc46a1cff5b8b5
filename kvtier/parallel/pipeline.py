"""PipelineStage: how a pipeline stage's Transformer passes activations on and shares the logits.

Stage s's rank t receives its hidden states from stage s-1's rank t and sends its own to stage
s+1's rank t (torch.distributed send/recv: gloo on CPU, NCCL on CUDA). The last stage's first rank
broadcasts the logits, so every rank samples the same tokens from the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True, slots=True)
class PipelineStage:
    is_first: bool
    is_last: bool
    previous_rank: int | None  # world rank activations come from
    next_rank: int | None  # world rank activations go to
    logits_rank: int  # world rank whose logits every rank takes

    def receive(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The previous stage's hidden states `[num_tokens, hidden]` for this step."""
        assert self.previous_rank is not None, "the first stage embeds its tokens"
        x = torch.empty(shape, dtype=dtype, device=_device())
        dist.recv(x, src=self.previous_rank)
        return x

    def send(self, x: torch.Tensor) -> None:
        assert self.next_rank is not None, "the last stage computes the logits"
        dist.send(x.contiguous(), dst=self.next_rank)

    def share_logits(self, logits: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
        """The last stage's logits `[batch, vocab]` (float32) on every rank."""
        if logits is None:
            logits = torch.empty(shape, dtype=torch.float32, device=_device())
        dist.broadcast(logits, src=self.logits_rank)
        return logits


def _device() -> torch.device:
    """Where collectives of this process's backend take tensors: its CUDA device under NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
