"""Tensor and pipeline parallelism for the reference decoder on torch.distributed (see shards.py)."""
