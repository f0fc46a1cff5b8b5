"""The remote tier's own RESP calls (tiers/remote/_resp.c and its twin pyresp.py): the same replies
from a real redis-server, and a broken or hostile stream only ever an OSError, never a hang or a crash."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import xxhash

from kvtier.config import RemoteTierConfig
from kvtier.tiers.remote import pyresp, wire
from kvtier.tiers.remote.wire import Wire, command
from tests.tiers.remote.redis_server import RedisServer

TWINS = [pytest.param(True, id="native"), pytest.param(False, id="python-twin")]


def resp_of(native: bool) -> wire.Resp:
    if native and not wire.native_built():
        pytest.skip("kvtier.tiers.remote._resp is not built")
    return wire.routines(native)


def connected(server: RedisServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=2.0)


@pytest.mark.parametrize("native", TWINS)
def test_replies_from_a_real_server(redis_server: RedisServer, native: bool) -> None:
    resp = resp_of(native)
    sock = connected(redis_server)
    value = bytes(range(256)) * 40  # 10240 bytes
    assert resp.call(sock, [command(b"SET", b"a", b"x"), b""], 2.0) == b"+OK"
    assert resp.call(sock, [b"*4\r\n$3\r\nSET\r\n$1\r\nb\r\n$10240\r\n", value[:5000], value[5000:],
                            b"\r\n$2\r\nNX\r\n"], 2.0) == b"+OK"
    assert resp.call(sock, [command(b"SET", b"b", b"y", b"NX")], 2.0) == b"$-1"  # taken: NX refuses
    assert resp.call(sock, [command(b"GET", b"a")], 2.0) == b"$1"  # a bulk reply's value is read and dropped
    assert resp.call(sock, [command(b"RPUSH", b"list", b"1")], 2.0) == b":1"
    assert resp.call(sock, [command(b"NOSUCHCOMMAND")], 2.0).startswith(b"-ERR")
    header, payload, other = bytearray(240), bytearray(10000), bytearray(7)
    request = b"".join(command(b"GET", n) for n in (b"b", b"missing", b"a", b"list", b"b"))
    replies = resp.get_many_into(sock, request, [([header, payload], 240), ([bytearray(3)], 0),
                                                 ([other], 0), ([bytearray(1)], 0), ([bytearray(10)], 0)], 2.0)
    assert replies[0] == (10240, xxhash.xxh3_64_intdigest(value[240:]))
    assert bytes(header) + bytes(payload) == value
    assert replies[1] == (-1, None)  # nil
    assert replies[2] == (1, None) and other == bytearray(7)  # another length: dropped unread, buffers untouched
    assert replies[3][0] == -2 and replies[3][1].startswith(b"WRONGTYPE")
    assert replies[4] == (10240, None)
    assert resp.call(sock, [command(b"PING")], 2.0) == b"+PONG"  # the stream is still in step
    sock.close()


class FakeServer:
    """A loopback listener that answers each connection with `reply(data_received)`, for broken streams."""

    def __init__(self, reply: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(65536)
                    self.reply(conn)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def sends(data: bytes, then_wait: threading.Event | None = None) -> Callable[[socket.socket], None]:
    def reply(conn: socket.socket) -> None:
        conn.sendall(data)
        if then_wait is not None:
            then_wait.wait(5)
    return reply


@pytest.fixture
def hold() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


BROKEN = {
    "closed mid-value": b"$100\r\n" + b"x" * 40,
    "closed before a reply": b"",
    "a line too long": b"+" + b"A" * 5000,
    "not a bulk length": b"$12x4\r\n",
    "a negative length": b"$-7\r\n",
    "a length far too large": b"$99999999999999999999\r\n",
    "an array": b"*2\r\n$1\r\na\r\n",
    "bytes past the reply": b"$4\r\nabcd\r\n+EXTRA\r\n",
    "a value not ended by CRLF": b"$4\r\nabcdXY",
    "a dropped value not ended by CRLF": b"$2\r\nabXY",
}


@pytest.mark.parametrize("native", TWINS)
@pytest.mark.parametrize("stream", list(BROKEN), ids=list(BROKEN))
def test_a_broken_reply_is_an_oserror(native: bool, stream: str) -> None:
    resp = resp_of(native)
    server = FakeServer(sends(BROKEN[stream]))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=1.0) as sock, pytest.raises(OSError):
            resp.get_many_into(sock, command(b"GET", b"k"), [([bytearray(4)], 0)], 1.0)
    finally:
        server.close()


@pytest.mark.parametrize("native", TWINS)
def test_a_server_that_stops_answering_times_out(native: bool, hold: threading.Event) -> None:
    resp = resp_of(native)
    server = FakeServer(sends(b"$1000\r\n" + b"x" * 10, then_wait=hold))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.2) as sock, pytest.raises(TimeoutError):
            resp.get_many_into(sock, command(b"GET", b"k"), [([bytearray(1000)], 0)], 0.2)
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.2) as sock, pytest.raises(TimeoutError):
            resp.call(sock, [command(b"PING")], 0.2)
    finally:
        server.close()


def test_the_twins_agree_on_pyresp_bulk_lengths() -> None:
    assert [pyresp.bulk_length(line) for line in (b"$0", b"$-1", b"$12", b"$", b"+OK", b"$1x", b"$-2")] == \
        [0, -1, 12, -2, -2, -2, -2]


@pytest.mark.parametrize("native", TWINS)
def test_the_pool_retries_on_a_new_connection_and_selects_the_urls_db(redis_server: RedisServer,
                                                                     native: bool) -> None:
    config = RemoteTierConfig(url=f"redis://127.0.0.1:{redis_server.port}/3", capacity_bytes=1 << 20,
                              timeout_s=1.0, native_io=native)
    resp_of(native)
    pool = Wire(config, native)
    assert pool.set_nx("k", [b"ab", b"cd"], None) and not pool.set_nx("k", [b"zz"], None)
    assert redis_server.cli("SELECT", "3") == "True"
    import redis

    assert redis.Redis(port=redis_server.port, db=3).get("k") == b"abcd"  # the URL's db, not db 0
    assert redis.Redis(port=redis_server.port, db=0).get("k") is None
    redis.Redis(port=redis_server.port).execute_command("CLIENT", "KILL", "TYPE", "normal")  # drops pooled ones too
    out = bytearray(4)
    assert pool.get_many_into(["k"], [([out], 0)]) == [(4, xxhash.xxh3_64_intdigest(b"abcd"))] and out == b"abcd"
    with pytest.raises(redis.exceptions.ResponseError):
        pool.set_nx("k", [b"x"], -5)  # the server's error reply, typed
    pool.close()


@pytest.mark.parametrize("native", TWINS)
def test_a_wrong_password_and_a_closed_pool_are_redis_errors_the_store_takes_as_misses(tmp_path,
                                                                                      native: bool) -> None:
    import redis

    resp_of(native)
    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    server.start()
    try:
        wrong = RemoteTierConfig(url=f"redis://:nope@127.0.0.1:{server.port}/0", capacity_bytes=1 << 20,
                                 timeout_s=1.0, native_io=native)
        with pytest.raises(redis.exceptions.AuthenticationError, match="check the password"):
            Wire(wrong, native).get_many_into(["k"], [([bytearray(1)], 0)])
        pool = Wire(RemoteTierConfig(url=f"redis://:s3cret@127.0.0.1:{server.port}/0", capacity_bytes=1 << 20,
                                     timeout_s=1.0, native_io=native), native)
        assert pool.get_many_into(["k"], [([bytearray(1)], 0)]) == [(-1, None)]
        pool.close()
        with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
            pool.get_many_into(["k"], [([bytearray(1)], 0)])
    finally:
        server.stop()


@pytest.mark.parametrize("native", TWINS)
def test_bad_arguments_are_typed_errors_before_anything_is_sent(redis_server: RedisServer, native: bool) -> None:
    resp = resp_of(native)
    sock = connected(redis_server)
    get = command(b"GET", b"k")
    with pytest.raises(TypeError):
        resp.get_many_into(sock, get, [[[bytearray(1)], 0]], 1.0)  # type: ignore[list-item]  # not a tuple
    with pytest.raises(ValueError):
        resp.get_many_into(sock, get, [([bytearray(4)], -2)], 1.0)
    with pytest.raises(BufferError):
        resp.get_many_into(sock, get, [([b"read-only"], 0)], 1.0)
    assert resp.call(sock, [command(b"PING")], 1.0) == b"+PONG"  # nothing was sent: still in step
    sock.close()
    with pytest.raises(OSError):  # a closed socket: an OSError, never another type
        resp.call(sock, [command(b"PING")], 1.0)


def test_a_blocking_socket_with_kernel_timeouts_reads_whole_values_and_times_out(redis_server: RedisServer,
                                                                                hold: threading.Event) -> None:
    """The compiled calls on the connections Wire makes (blocking, SO_RCVTIMEO/SO_SNDTIMEO): the same replies,
    a value in one MSG_WAITALL receive, and a silent server a TimeoutError after the kernel's wait."""
    resp = resp_of(True)
    sock = connected(redis_server)
    wire.blocking_with_timeouts(sock, 0.3)
    value = bytes(range(256)) * 4096  # 1 MiB: many TCP segments
    assert resp.call(sock, [command(b"SET", b"big", value)], 0.3) == b"+OK"
    header, payload = bytearray(100), bytearray(len(value) - 100)
    assert resp.get_many_into(sock, command(b"GET", b"big"), [([header, payload], 100)], 0.3) == \
        [(len(value), xxhash.xxh3_64_intdigest(value[100:]))]
    assert bytes(header) + bytes(payload) == value
    sock.close()
    server = FakeServer(sends(b"$1000\r\n" + b"x" * 10, then_wait=hold))
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as silent:
            wire.blocking_with_timeouts(silent, 0.2)
            with pytest.raises(TimeoutError):
                resp.get_many_into(silent, command(b"GET", b"k"), [([bytearray(1000)], 0)], 0.2)
    finally:
        server.close()
