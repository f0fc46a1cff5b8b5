"""The remote tier's hot path to a standalone server: SET NX from a block's parts, GET straight into
block memory, on a pool of plain sockets; through the compiled `_resp` where built, else its twin
`pyresp` (same calls, same replies).

Why not redis-py here: its per-command path (parser feed, a bytes object per value, a copy, each
under the GIL) held the tier to 0.2-0.3 of redis-benchmark's SET/GET rate on the same server
(README: the remote tier row), and the value still had to be copied into the block. redis-py stays
for everything else: a cluster (slot routing, redirects), TLS, and the rare commands (DEL, EXISTS).

Failures: a connection that times out or breaks is closed, never reused (a half-read reply would
put the stream out of step), and the command is retried on a new one with exponential backoff,
`retries` times; then the OSError goes to the caller (the store turns it into a miss). Error
replies are redis-py's exception types (ResponseError, OutOfMemoryError, AuthenticationError), so
the store handles both clients' failures alike.
"""
from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import struct
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Protocol, TypeVar, cast

from kvtier.config import RemoteTierConfig
from kvtier.errors import TierIOError
from kvtier.tiers.format.checksum import BufferLike
from kvtier.tiers.remote import pyresp

try:
    from kvtier.tiers.remote import _resp
except ImportError:  # NOTE: not built: no C compiler at install time
    _resp = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)
T = TypeVar("T")
GetReply = tuple[int, "int | bytes | None"]


class Resp(Protocol):
    """The calls `_resp` and `pyresp` both provide (see pyresp for what each does)."""

    def call(self, sock: socket.socket, parts: Sequence[BufferLike], timeout_s: float) -> bytes: ...

    def get_many_into(self, sock: socket.socket, command: bytes,
                      targets: Sequence[tuple[Sequence[BufferLike], int]], timeout_s: float) -> list[GetReply]: ...


def native_built() -> bool:
    """Whether the compiled calls (kvtier.tiers.remote._resp) are importable."""
    return _resp is not None


def routines(native: bool) -> Resp:
    """The compiled module when `native` asks for it and it is built, else the Python twin."""
    if native and _resp is None:
        _log_not_built()
    module: ModuleType = _resp if native and _resp is not None else pyresp
    return cast(Resp, module)


@functools.cache
def _log_not_built() -> None:
    logger.info("kvtier.tiers.remote._resp is not built (no C compiler at install?); the remote tier uses its "
                "Python twin, which is slower under concurrency; reinstall with a C compiler (gcc) to build it")


def blocking_with_timeouts(sock: socket.socket, timeout_s: float) -> None:
    """Make `sock` blocking with the kernel bounding each wait (SO_RCVTIMEO, SO_SNDTIMEO): the compiled
    calls then receive a value in one recvmsg(MSG_WAITALL) instead of a poll and a receive per segment."""
    sock.settimeout(None)
    seconds = min(max(timeout_s, 0.001), 86400.0)
    timeval = struct.pack("@ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def command(*args: bytes) -> bytes:
    """One RESP2 command (an array of bulk strings) whose arguments are all short."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class Wire:
    """A pool of plain-socket connections to one standalone server (redis:// or unix:// URL)."""

    def __init__(self, config: RemoteTierConfig, native: bool = True) -> None:
        from redis.connection import parse_url

        options: dict[str, Any] = cast(Callable[[str], dict[str, Any]], parse_url)(config.url)  # redis-py's reading
        if "connection_class" in options and "path" not in options:
            raise ValueError(f"Wire serves redis:// and unix:// URLs (TLS stays with redis-py), got {config.url!r}")
        self.address: str | tuple[str, int] = options.get("path") or (options.get("host", "localhost"),
                                                                        int(options.get("port", 6379)))
        password = options.get("password")
        if config.password_env is not None:
            if config.password_env not in os.environ:
                raise TierIOError(f"RemoteTierConfig.password_env names {config.password_env}, which is not set")
            password = os.environ[config.password_env]
        self._hello: list[bytes] = []
        if password is not None:
            user = options.get("username")
            self._hello.append(command(b"AUTH", *([user.encode()] if user else []), password.encode()))
        if int(options.get("db", 0)):
            self._hello.append(command(b"SELECT", b"%d" % int(options["db"])))
        self.config = config
        self.native = native and native_built()
        self.resp = routines(native)
        # NOTE: one token per connection allowed, an open socket or None (not opened yet); SimpleQueue is C
        self._slots: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        for _ in range(config.max_connections):
            self._slots.put(None)
        self._closed = False

    # -- connections ------------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        timeout = self.config.timeout_s
        if isinstance(self.address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(self.address, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.native:
            blocking_with_timeouts(sock, timeout)
        try:
            for hello in self._hello:
                reply = self.resp.call(sock, [hello], timeout)
                if reply[:1] == b"-":
                    from redis.exceptions import AuthenticationError

                    raise AuthenticationError(f"remote tier {self.config.url.split('@')[-1]} refused the connection: "
                                              f"{reply[1:].decode(errors='replace')}; check the password and db "
                                              "in the URL")
        except BaseException:
            sock.close()
            raise
        return sock

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(socket, *args) on a pooled connection; a connection that fails is closed and fn retried on a new one."""
        config = self.config
        for attempt in range(config.retries + 1):
            if attempt:
                time.sleep(min(config.backoff_s * 2 ** (attempt - 1), config.backoff_s * 2 ** config.retries))
            try:
                sock = self._slots.get(timeout=config.timeout_s)
            except queue.Empty:
                raise TimeoutError(f"remote tier: all {config.max_connections} connections busy for "
                                   f"{config.timeout_s} s; raise RemoteTierConfig.max_connections") from None
            try:
                if self._closed:
                    from redis.exceptions import ConnectionError as ClosedError

                    raise ClosedError("remote tier is closed")
                if sock is None:
                    sock = self._connect()
                result = fn(sock, *args)
            except BaseException as exc:
                if sock is not None:
                    sock.close()
                self._slots.put(None)
                if not isinstance(exc, OSError) or attempt == config.retries:
                    raise
                continue
            if self._closed:  # NOTE: closed while this call ran: its socket is closed here, by its only user
                sock.close()
                sock = None
            self._slots.put(sock)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the idle connections now and each busy one when its call returns (never under a call:
        its descriptor could be reused meanwhile); later calls raise redis.ConnectionError (a miss)."""
        self._closed = True
        tokens = []
        while True:
            try:
                tokens.append(self._slots.get_nowait())
            except queue.Empty:
                break
        for sock in tokens:
            if sock is not None:
                sock.close()
            self._slots.put(None)
    # -- commands ---------------------------------------------------------------------------------

    def set_nx(self, name: str, parts: Sequence[BufferLike], px: int | None) -> bool:
        """SET name <the parts' bytes> NX [PX px]: True when stored, False when the name was taken.

        Raises:
            redis.OutOfMemoryError: the server is full (maxmemory); redis.ResponseError: another error reply.
            OSError: the server is unreachable, after retries.
        """
        size = sum(memoryview(p).nbytes for p in parts)
        key = name.encode()
        head = b"*%d\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (4 if px is None else 6, len(key), key, size)
        tail = b"\r\n$2\r\nNX\r\n" + (b"" if px is None else b"$2\r\nPX\r\n$%d\r\n%d\r\n" % (len(b"%d" % px), px))
        reply = self._run(self.resp.call, [head, *parts, tail], self.config.timeout_s)
        if reply == b"+OK":
            return True
        if reply == b"$-1":
            return False
        from redis.exceptions import OutOfMemoryError, ResponseError

        message = reply[1:].decode(errors="replace") if reply[:1] == b"-" else f"unexpected reply {reply!r}"
        raise OutOfMemoryError(message) if message.startswith("OOM") else ResponseError(message)

    def get_many_into(self, names: Sequence[str],
                      targets: Sequence[tuple[Sequence[BufferLike], int]]) -> list[GetReply]:
        """One pipelined GET per name into its target (see pyresp.get_many_into). An error reply comes
        back as (-2, message) only for a value of another type (WRONGTYPE: not ours to read).

        Raises:
            redis.ResponseError: another error reply (NOAUTH, LOADING, ...): the server failed the call.
            OSError: the server is unreachable, after retries.
        """
        request = b"".join([b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(name), name) for name in map(str.encode, names)])
        replies = self._run(self.resp.get_many_into, request, targets, self.config.timeout_s)
        for length, message in replies:
            if length == -2 and isinstance(message, bytes) and not message.startswith(b"WRONGTYPE"):
                from redis.exceptions import ResponseError

                raise ResponseError(message.decode(errors="replace"))
        return replies
