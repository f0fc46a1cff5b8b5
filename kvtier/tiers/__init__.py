"""The tiers below the device pool and the pool itself: the TierStore interface (base.py), device
memory (device.py), host RAM (host.py), folders on disk or shared (disk/), and the block object
they store (format/)."""
