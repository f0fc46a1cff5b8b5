"""kvtier.kernels: Triton kernels for the paged KV cache and their pure-torch references.

Installed as `kvtier.kernels` (never as a top-level `kernels`). `kvtier.ops` chooses between them.
Importing this package does not import triton; the kernel modules do, on first use:
`store_kv`, `paged_attention` (decode), `paged_prefill`, `copy_blocks`; `reference` is torch-only.
"""
