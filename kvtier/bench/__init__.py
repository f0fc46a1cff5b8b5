"""The measurements behind `kvtier bench`: the storage bench (KV-offload I/O through a tier against the
raw file-I/O ceiling, its trace, runner and report), codec throughput, and warm restart."""
