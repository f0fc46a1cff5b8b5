"""The serving loop over the reference decoder (not the transfer engine): requests, sampling, a
scheduler with continuous batching, chunked prefill and preemption by offload, and per-request
metrics. Modules are imported where used; importing this package loads nothing."""
