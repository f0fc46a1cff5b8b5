"""kvtier.kernels: Triton kernels for the paged KV cache and their pure-torch references.

Installed as `kvtier.kernels` (never as a top-level `kernels`). `kvtier.ops` chooses between them.
"""
