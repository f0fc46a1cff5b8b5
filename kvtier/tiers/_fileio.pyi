"""Type stub of the compiled kvtier.tiers._fileio (source: _fileio.c)."""
from collections.abc import Sequence

from kvtier.tiers.format import BufferLike

def publish_unnamed(final_path: str, parts: Sequence[BufferLike], fsync: bool, via_proc: bool) -> None: ...
def write_renamed(temp_path: str, final_path: str, parts: Sequence[BufferLike], fsync: bool) -> None: ...
