"""Type stub of the compiled kvtier.tiers.disk._fileio (source: _fileio.c; Python twin: pyfileio.py)."""
from collections.abc import Sequence

from kvtier.tiers.format import BufferLike

def publish_unnamed(root_fd: int, fanout: str, name: str, parts: Sequence[BufferLike], fsync: bool,
                    via_proc: bool, mode: int) -> None: ...
def write_renamed(root_fd: int, fanout: str, temp_name: str, name: str, parts: Sequence[BufferLike], fsync: bool,
                  mode: int) -> None: ...
def read_into(root_fd: int, fanout: str, name: str, parts: Sequence[memoryview],
              want: int) -> tuple[int, int | None, int]: ...
