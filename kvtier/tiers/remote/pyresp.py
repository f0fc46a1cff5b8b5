"""The Python twin of `_resp.c`: the remote tier's GET into caller buffers and its SET from parts, with
the same names, signatures, replies and errors, over a plain TCP or unix socket (RESP2).

It holds the GIL between system calls, so it is slower under several threads; it runs where the
compiled module is not built, and in the tests beside it.
"""
from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

import xxhash

from kvtier.tiers.format.checksum import BufferLike

READ_BUF = 4096  # what one receive takes beyond the bytes asked for: reply lines
MAX_LINE = 512  # the longest reply line read (an error's message)
MAX_BULK = 1 << 31  # a bulk length above this is no reply of ours: a broken stream


class _Stream:
    """A socket's reply bytes: a small buffer for reply lines, values straight into the caller's buffers."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        # NOTE: as _resp.c: at least 1 ms a wait, at most a day
        sock.settimeout(min(max(timeout_s, 0.001), 86400.0) if timeout_s > 0 else None)
        self.sock = sock
        self.buf = bytearray(READ_BUF)
        self.view = memoryview(self.buf)
        self.pos = self.end = 0

    def _recv_into(self, view: memoryview) -> int:
        try:
            got = self.sock.recv_into(view)
        except TimeoutError:  # NOTE: socket.timeout is TimeoutError; the message says whose
            raise TimeoutError("redis server: no reply within the timeout") from None
        if got == 0:
            raise OSError(errno.ECONNRESET, "the server closed the connection")
        return got

    def send(self, parts: Sequence[BufferLike]) -> None:
        if not parts:
            return
        try:
            self.sock.sendall(b"".join(parts) if len(parts) > 1 else parts[0])
        except TimeoutError:  # NOTE: socket.timeout is TimeoutError; the message says whose
            raise TimeoutError("redis server: no reply within the timeout") from None

    def line(self) -> bytes:
        scanned = self.pos
        while True:
            at = self.buf.find(b"\r\n", max(scanned - 1, self.pos), self.end)
            if at >= 0:
                line = bytes(self.view[self.pos:at])
                self.pos = at + 2
                return line
            if self.end - self.pos > MAX_LINE:
                raise OSError(errno.EPROTO, "a reply line longer than any this client reads")
            scanned = self.end
            if self.pos:
                self.buf[:self.end - self.pos] = self.view[self.pos:self.end]
                scanned -= self.pos
                self.end -= self.pos
                self.pos = 0
            self.end += self._recv_into(self.view[self.end:])

    def read_exact(self, view: memoryview) -> None:
        have = min(self.end - self.pos, view.nbytes)
        view[:have] = self.view[self.pos:self.pos + have]
        self.pos += have
        done = have
        while done < view.nbytes:
            done += self._recv_into(view[done:])

    def skip(self, n: int) -> None:
        sink = memoryview(bytearray(min(n, READ_BUF)))
        while n > 0:
            take = min(n, READ_BUF)
            self.read_exact(sink[:take])
            n -= take

    def expect_crlf(self) -> None:
        """The CRLF that ends a bulk value; other bytes put the stream out of step."""
        end = memoryview(bytearray(2))
        self.read_exact(end)
        if bytes(end) != b"\r\n":
            raise OSError(errno.EPROTO, "a bulk value not followed by CRLF: the stream is out of step")

    def check_drained(self) -> None:
        if self.pos != self.end:
            raise OSError(errno.EPROTO, "bytes past the replies: the stream is out of step")


def bulk_length(line: bytes) -> int:
    """A bulk reply's length from its line b"$<n>" (-1: nil); -2 when the line is no bulk length."""
    if len(line) < 2 or line[:1] != b"$":
        return -2
    if line == b"$-1":
        return -1
    digits = line[1:]
    if not digits.isdigit() or not digits.isascii() or int(digits) > MAX_BULK:
        return -2
    return int(digits)


def call(sock: socket.socket, parts: Sequence[BufferLike], timeout_s: float) -> bytes:
    """Send the bytes of `parts` and read one reply's first line without CRLF (see _resp.call)."""
    stream = _Stream(sock, timeout_s)
    stream.send([memoryview(p).cast("B") for p in parts])
    line = stream.line()
    n = bulk_length(line)
    if n >= 0:
        stream.skip(n)
        stream.expect_crlf()
    stream.check_drained()
    return line


def get_many_into(sock: socket.socket, command: bytes, targets: Sequence[tuple[Sequence[BufferLike], int]],
                  timeout_s: float) -> list[tuple[int, int | bytes | None]]:
    """One pipelined GET per target, each value of exactly its buffers' bytes read into them (see
    _resp.get_many_into)."""
    stream = _Stream(sock, timeout_s)
    held = []
    for target in targets:
        if not isinstance(target, tuple):
            raise TypeError("each target must be a tuple (parts, checksum_from)")
        parts, checksum_from = target
        if checksum_from < 0:
            raise ValueError(f"checksum_from must be >= 0, got {checksum_from}")
        views = [memoryview(p).cast("B") for p in parts]
        if any(v.readonly for v in views):
            raise BufferError("get_many_into's buffers must be writable")
        held.append((views, checksum_from))
    if command:
        stream.send([command])
    results: list[tuple[int, int | bytes | None]] = []
    for views, checksum_from in held:
        line = stream.line()
        if line[:1] == b"-":
            results.append((-2, line[1:1 + MAX_LINE]))
            continue
        n = bulk_length(line)
        if n == -2:
            raise OSError(errno.EPROTO, f"not a GET reply: {line[:40]!r}")
        if n != sum(v.nbytes for v in views):
            if n >= 0:
                stream.skip(n)
                stream.expect_crlf()
            results.append((n, None))
            continue
        for view in views:
            stream.read_exact(view)
        stream.expect_crlf()
        state = xxhash.xxh3_64()
        skip = checksum_from
        for view in views:
            drop = min(skip, view.nbytes)
            skip -= drop
            state.update(view[drop:])
        results.append((n, state.intdigest()))
    stream.check_drained()
    return results
