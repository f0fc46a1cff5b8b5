"""The measurements behind `kvtier bench`: the storage bench (KV-offload I/O through a tier against fio
and plain Python file I/O, its trace, rounds and report), codec throughput, and warm restart."""
