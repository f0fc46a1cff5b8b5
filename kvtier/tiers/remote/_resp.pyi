"""Type stub of the compiled kvtier.tiers.remote._resp (source: _resp.c; Python twin: pyresp.py)."""
import socket
from collections.abc import Sequence

from kvtier.tiers.format import BufferLike

def call(sock: socket.socket, parts: Sequence[BufferLike], timeout_s: float) -> bytes: ...
def get_many_into(sock: socket.socket, command: bytes, targets: Sequence[tuple[Sequence[BufferLike], int]],
                  timeout_s: float) -> list[tuple[int, int | bytes | None]]: ...
