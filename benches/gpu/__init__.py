"""The GPU check's harness (repository tooling, not installed): shapes, measurements, run, table.

Driven by benches/gpu_check.py; it runs the repository's gpu tests and hashes its kernels/ folder.
"""
