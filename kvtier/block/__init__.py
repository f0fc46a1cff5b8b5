"""The device pool's bookkeeping, on the CPU and without torch.cuda: block metadata, the LRU free
queue, the allocator with its prefix-cache map, chained block hashes, block tables and the manager."""
