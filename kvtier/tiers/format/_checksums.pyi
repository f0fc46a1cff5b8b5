"""Type stub of the compiled kvtier.tiers.format._checksums (source: _checksums.c; twin: checksum.py)."""
from kvtier.tiers.format.checksum import BufferLike

def payload_checksums(payload: BufferLike, segment_len: int) -> tuple[int, bytes]: ...
