"""RemoteStore: block objects in Redis/Valkey, verified like a folder's, failures as misses.

Every value is the object a folder tier would write (tiers/format/): header with namespace, block
hash and checksums, then the payload; a read verifies it all, so a value another writer damaged or
put under the wrong key is a miss, and it is deleted. Keys are `kv:<block hash hex>` (the hash
chains the namespace, and the header repeats it); a put never overwrites (SET NX: objects are
content-named), so engines sharing a server write each block once. Connection errors and timeouts are retried by
redis-py (exponential backoff); past that a call is a miss (get) or a TierIOError (put), and a
circuit breaker stops calling a server that keeps failing until a probe finds it back.

Why redis-py: the reference client of both Redis and Valkey (valkey-py is its fork with the same
API), with connection pooling, retries with backoff, pipelines, TLS, AUTH and Redis Cluster. A
standalone server's GET and SET (the hot path) go through `wire.Wire` instead: a reply's value lands
in the block's memory and is checksummed there, without the GIL (see wire.py for why).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from kvtier.config import KVLayout, RemoteTierConfig
from kvtier.errors import FormatError, TierFullError, TierIOError
from kvtier.tiers.base import BlockKey, TierStore
from kvtier.tiers.format import max_object_bytes
from kvtier.tiers.format.codecs import tensor_bytes
from kvtier.tiers.format.encode import encode_block
from kvtier.tiers.format.header import (
    decode_header,
    header_bytes_for,
    stored_payload_checksum,
)
from kvtier.tiers.format.verify import holds_key, verify_object, verify_raw_header
from kvtier.tiers.pins import PinCounts
from kvtier.tiers.remote.breaker import CircuitBreaker
from kvtier.tiers.remote.wire import Wire
from kvtier.types import BlockHash, TierKind

logger = logging.getLogger(__name__)


def redis_key(block_hash: BlockHash, shard: str | None = None) -> str:
    """`kv:<block hash hex>`, or `kv:<shard digest hex>:<block hash hex>` for a rank's shard (hex only)."""
    if shard is None:
        return f"kv:{block_hash.hex()}"
    return f"kv:{hashlib.sha256(shard.encode()).hexdigest()[:16]}:{block_hash.hex()}"


KNOWN_HEADERS = 1 << 15
"""Headers remembered, with their payload checksums (of objects this process wrote or verified, about
300 bytes each): a read whose header is one of them byte for byte compares the key's fields only,
instead of building a whole expected header (verify_raw_header)."""

SOCKET_READ_BYTES = (64 << 10, 1 << 20)
"""Bounds of redis-py's per-connection read buffer, sized to one object: its default of 64 KiB took
four reads and four parser feeds per 256 KiB value (GET of 256 KiB values, 4 connections, with
hiredis: 1176-1819/s at 64 KiB, 1456-2549/s at 1 MiB; benches/bench_remote.py)."""


def _is_a_header(header: bytearray) -> bool:
    """Whether `header` is a valid object header at all, though not this tier's raw one for the key: a
    zstd object as long as a raw block, a raw one with a segment table whose padding hid its length
    (layers x heads <= 3), or another key's. The slow way reads the whole value and says which."""
    try:
        decode_header(header)
    except FormatError:
        return False
    return True


def connect(config: RemoteTierConfig, object_bytes: int = 0) -> Any:
    """A pooled redis-py client for `config.url`, retrying connection errors and timeouts with backoff,
    reading replies into a buffer that holds an object of `object_bytes` (within SOCKET_READ_BYTES)."""
    try:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise TierIOError("the remote tier needs redis-py: pip install 'kvtier[redis]'") from exc
    options: dict[str, Any] = {
        "socket_timeout": config.timeout_s, "socket_connect_timeout": config.timeout_s,
        "retry": Retry(ExponentialBackoff(cap=config.backoff_s * 2 ** config.retries, base=config.backoff_s),
                       config.retries),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "socket_read_size": min(max(object_bytes, SOCKET_READ_BYTES[0]), SOCKET_READ_BYTES[1]),
    }
    if config.password_env is not None:
        if config.password_env not in os.environ:
            raise TierIOError(f"RemoteTierConfig.password_env names {config.password_env}, which is not set")
        options["password"] = os.environ[config.password_env]
    if config.tls_ca_file is not None:
        if not os.path.isfile(config.tls_ca_file):
            raise TierIOError(f"RemoteTierConfig.tls_ca_file {config.tls_ca_file} is not a file: give the PEM "
                              "bundle of the CA that signed the server's certificate")
        options["ssl_ca_certs"] = config.tls_ca_file
    if config.cluster:
        return redis.RedisCluster.from_url(config.url, **options)
    pool = redis.BlockingConnectionPool.from_url(config.url, max_connections=config.max_connections,
                                                 timeout=config.timeout_s, **options)
    return redis.Redis(connection_pool=pool)


class RemoteStore(TierStore):
    """A TierStore over one Redis/Valkey server or cluster; see the module docstring."""

    kind = TierKind.REMOTE

    def __init__(self, layout: KVLayout, config: RemoteTierConfig) -> None:
        super().__init__(layout)
        import redis

        self.config = config
        # NOTE: RedisClusterException (no node serves a slot, a cluster that cannot be reached) is no RedisError
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, redis.exceptions.RedisClusterException,
                                                         OSError)
        self._oom = redis.exceptions.OutOfMemoryError
        self._client = connect(config, max_object_bytes(layout))
        # NOTE: a standalone server's GET/SET skip redis-py (wire.py); a cluster and TLS stay with it
        self._wire = None if config.cluster or config.url.startswith("rediss://") else Wire(config, config.native_io)
        self._known: OrderedDict[BlockHash, tuple[bytes, int]] = OrderedDict()  # (header, payload checksum)
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_s)
        self._lock = threading.Lock()
        self._mine: OrderedDict[BlockHash, int] = OrderedDict()  # objects this process wrote: bytes, LRU first
        self._used = 0
        self._pins = PinCounts()
        self._ttl_ms = None if config.ttl_s is None else max(1, int(config.ttl_s * 1000))

    @property
    def capacity_bytes(self) -> int:
        return self.config.capacity_bytes

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    @property
    def num_blocks(self) -> int:
        with self._lock:
            return len(self._mine)

    # -- calls to the server, each a miss or an error when it fails ------------------------------

    def _key(self, block_hash: BlockHash) -> str:
        return redis_key(block_hash, self.config.shard)

    def _call(self, what: str, fn: Any, *args: Any) -> tuple[bool, Any]:
        """(True, result), or (False, None) when the breaker is open or the call failed after retries."""
        if not self.breaker.allow():
            return False, None
        try:
            result = fn(*args)
        except self._oom:
            raise
        except self._errors as exc:
            self.breaker.failed()
            with self._lock:
                self.stats.io_errors += 1
            logger.warning("remote tier %s: %s failed (%s)%s", self.config.url.split("@")[-1], what, exc,
                           "; not calling it for a while" if self.breaker.is_open else "")
            return False, None
        self.breaker.succeeded()
        return True, result

    def contains(self, block_hash: BlockHash) -> bool:
        with self._lock:
            if block_hash in self._mine:
                return True
        ok, found = self._call("EXISTS", self._client.exists, self._key(block_hash))
        return bool(ok and found)

    def put(self, key: BlockKey, data: torch.Tensor) -> None:
        """Store one block; see TierStore.put.

        Raises:
            TierFullError: past capacity_bytes with every object of this process pinned.
            TierIOError: the server is unreachable, refused the write (full: maxmemory), or the breaker is open.
        """
        self.check_block(data)
        with self._lock:
            if key.block_hash in self._mine:  # content-named and immutable: nothing to write
                self._mine.move_to_end(key.block_hash)
                return
        # NOTE: no segment table: a remote object is always read whole, so its payload is hashed once
        parts = encode_block(key, data, self.layout, self.config.codec, segments=False)
        size = sum(memoryview(p).nbytes for p in parts)
        self._make_room(key.block_hash, size)
        name = self._key(key.block_hash)
        try:
            if self._wire is not None:  # the parts as they are: no copy
                ok, created = self._call("SET", self._wire.set_nx, name, parts, self._ttl_ms)
            else:  # one copy: header + payload
                ok, created = self._call("SET", functools.partial(self._client.set, nx=True, px=self._ttl_ms), name,
                                         b"".join(parts))
        except self._oom as exc:
            with self._lock:
                self.stats.rejected += 1
            raise TierIOError(f"remote tier {self.config.url.split('@')[-1]} is full (maxmemory): {exc}; raise the "
                              f"server's maxmemory or set an eviction policy") from None
        if not ok:
            raise TierIOError(f"remote tier {self.config.url.split('@')[-1]} did not store {name} (unreachable, "
                              f"or paused after failures)")
        if not created:  # another engine wrote it first (NX): theirs, not charged to this budget
            return
        with self._lock:
            old = self._mine.pop(key.block_hash, 0)
            self._mine[key.block_hash] = size
            self._used += size - old
            self.stats.puts += 1
            self.stats.bytes_written += size
            if self.config.codec == "raw":  # NOTE: _known holds raw headers only (the fast path reads raw)
                self._remember(key.block_hash, bytes(parts[0]))

    def _make_room(self, block_hash: BlockHash, size: int) -> None:
        """Delete this process's least recently used unpinned objects until `size` more bytes fit."""
        victims: list[BlockHash] = []
        with self._lock:
            need = self._used + size - self._mine.get(block_hash, 0) - self.config.capacity_bytes
            if need <= 0:  # NOTE: the common case, without walking every object this process wrote
                return
            for victim, victim_size in list(self._mine.items()):
                if need <= 0:
                    break
                if victim == block_hash or self._pins.get(victim):
                    continue
                victims.append(victim)
                need -= victim_size
            if need > 0:
                raise TierFullError(f"remote tier: {size} more bytes would exceed capacity_bytes="
                                    f"{self.config.capacity_bytes} and every object of this process is pinned")
            for victim in victims:
                self._used -= self._mine.pop(victim)
                self._known.pop(victim, None)
                self.stats.evictions += 1
        if victims:
            self._call("DEL", self._client.delete, *(self._key(v) for v in victims))

    def get(self, key: BlockKey, out: torch.Tensor | None = None) -> torch.Tensor | None:
        return self.get_many([key], [out])[0]

    def get_many(self, keys: Sequence[BlockKey],
                 outs: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor | None]:
        """The verified blocks (into `outs[i]` when given), None for each miss; one pipelined round trip.

        NOTE: against a standalone server a value is read into `outs[i]` before it is verified, so on a
        miss `outs[i]` may hold any bytes (as the disk tier's reads into caller buffers)."""
        targets = self._outputs(keys, outs)
        for out in targets:
            if out is not None:
                self.check_block(out, "get")
        if not keys:
            return []
        if self._wire is not None:
            results, damaged, read = self._get_wired(self._wire, keys, targets)
        else:
            results, damaged, read = self._get_values(keys, targets)
        with self._lock:
            mine, hits = self._mine, 0
            for key, result in zip(keys, results):
                if result is not None:
                    hits += 1
                    if key.block_hash in mine:
                        mine.move_to_end(key.block_hash)
            stats = self.stats
            stats.hits += hits
            stats.misses += len(keys) - hits
            stats.bytes_read += read
            for block_hash in damaged:
                self._used -= mine.pop(block_hash, 0)
                self._known.pop(block_hash, None)
        if damaged:
            self._call("DEL", self._client.delete, *(self._key(h) for h in damaged))
        return results

    def _get_values(self, keys: Sequence[BlockKey], targets: Sequence[torch.Tensor | None]
                    ) -> tuple[list[torch.Tensor | None], list[BlockHash], int]:
        """Through redis-py, one MGET: (the verified blocks or None, the damaged blocks' hashes, bytes read)."""
        # NOTE: a cluster spreads blocks by hash; mget_nonatomic sends each node its keys in one pipeline
        mget = self._client.mget_nonatomic if self.config.cluster else self._client.mget
        ok, values = self._call("GET", mget, [self._key(k.block_hash) for k in keys])
        if not ok:
            values = [None] * len(keys)
        damaged: list[BlockHash] = []
        results = [self._verified_value(key, value, out, damaged) for key, out, value in zip(keys, targets, values)]
        return results, damaged, sum(len(v) for v in values if v is not None)

    def _get_wired(self, wire: Wire, keys: Sequence[BlockKey], targets: Sequence[torch.Tensor | None]
                   ) -> tuple[list[torch.Tensor | None], list[BlockHash], int]:
        """As _get_values, through the wire: each value of a raw block's exact size is read into the
        block itself (`out`, or a new tensor) and checksummed there; any other goes the redis-py way."""
        layout = self.layout
        blocks, headers, requests = [], [], []
        for key, out in zip(keys, targets):
            block = out if out is not None and out.is_cpu and out.is_contiguous() else torch.empty(
                layout.block_shape, dtype=layout.dtype)
            header = bytearray(header_bytes_for(len(key.token_ids)))  # NOTE: put writes no segment table
            blocks.append(block)
            headers.append(header)
            requests.append(([header, tensor_bytes(block)], len(header)))
        ok, replies = self._call("GET", wire.get_many_into, [self._key(k.block_hash) for k in keys], requests)
        if not ok:
            return [None] * len(keys), [], 0
        results: list[torch.Tensor | None] = []
        damaged: list[BlockHash] = []
        read = 0
        for key, out, header, block, (length, checksum) in zip(keys, targets, headers, blocks, replies):
            result = None
            if isinstance(checksum, int):  # read into the block: verify it there
                read += length
                failure = self._failure_in_place(key, header, checksum)
                if failure is None:
                    result = block if out is None or block is out else out.copy_(block)
                elif _is_a_header(header):  # e.g. another codec's object of a raw block's length
                    result = self._verified_value(key, self._get_value(key), out, damaged)
                else:
                    self._condemn(key, f"failed verification ({failure})", damaged)
            elif length == -2:  # WRONGTYPE (wire.py): a value of another type is no block of ours
                self._condemn(key, f"is not a string ({checksum!r})", damaged)
            elif length >= 0:  # another size: another codec's object, or damage; redis-py reads and says which
                read += length
                if length > max_object_bytes(layout):  # NOTE: not fetched: larger than any object of this layout
                    self._condemn(key, f"is {length} bytes, larger than any block object of this layout", damaged)
                else:
                    result = self._verified_value(key, self._get_value(key), out, damaged)
            results.append(result)
        return results, damaged, read

    def _get_value(self, key: BlockKey) -> bytes | None:
        """The value at a block's key through redis-py (None: absent, or the call failed)."""
        value: bytes | None = self._call("GET", self._client.get, self._key(key.block_hash))[1]
        return value

    def _verified_value(self, key: BlockKey, value: bytes | None, out: torch.Tensor | None,
                        damaged: list[BlockHash]) -> torch.Tensor | None:
        """_verified, and a value that fails it added to `damaged` (to be deleted)."""
        block = self._verified(key, value, out)
        if block is None and value is not None:
            damaged.append(key.block_hash)
        return block

    def _condemn(self, key: BlockKey, why: str, damaged: list[BlockHash]) -> None:
        """Count, log and add to `damaged` (to be deleted) a value that is no block of `key`'s."""
        with self._lock:
            self.stats.corrupt += 1
        logger.warning("remote tier value %s %s; deleted", self._key(key.block_hash), why)
        damaged.append(key.block_hash)

    def _failure_in_place(self, key: BlockKey, header: bytearray, checksum: int) -> FormatError | None:
        """None if `header` and a payload of checksum `checksum` are `key`'s whole raw block, else why not."""
        known = self._known.get(key.block_hash)  # NOTE: one dict read, atomic under the GIL: no lock taken
        fresh = known is None or header != known[0]  # not the header this process wrote or last verified
        if known is not None and not fresh and holds_key(header, key):
            stored = known[1]
        else:
            try:
                stored = verify_raw_header(header, key, self.layout, segments=False)
            except FormatError as exc:
                return exc
        if stored != checksum:
            return FormatError("payload checksum mismatch: the payload is corrupt")
        if fresh:  # NOTE: a header verified the slow way replaces an older one
            with self._lock:
                self._remember(key.block_hash, bytes(header))
        return None

    def _remember(self, block_hash: BlockHash, header: bytes) -> None:
        """Keep a verified header and its payload checksum (under self._lock), the oldest forgotten past
        KNOWN_HEADERS."""
        self._known[block_hash] = (header, stored_payload_checksum(header))
        self._known.move_to_end(block_hash)
        if len(self._known) > KNOWN_HEADERS:
            self._known.popitem(last=False)

    def _verified(self, key: BlockKey, value: bytes | None, out: torch.Tensor | None) -> torch.Tensor | None:
        """The block of a verified value (in `out` when given), or None: absent, or damaged (counted, logged).

        NOTE: a raw payload is checksummed where redis-py left it and copied once, into `out` (verify_object)."""
        if value is None:
            return None
        try:
            _, block = verify_object(value, key, self.layout, out=out)
        except FormatError as exc:
            with self._lock:
                self.stats.corrupt += 1
            logger.warning("remote tier value %s failed verification (%s); deleted", self._key(key.block_hash), exc)
            return None
        return block if out is None or block is out else out.copy_(block)

    def pin(self, block_hash: BlockHash) -> None:
        with self._lock:
            self._pins.add(block_hash)

    def unpin(self, block_hash: BlockHash) -> None:
        with self._lock:
            self._pins.release(block_hash)

    def evict(self, block_hash: BlockHash) -> bool:
        with self._lock:
            if self._pins.get(block_hash):
                raise RuntimeError(f"evict of pinned block {block_hash.hex()}")
            self._used -= self._mine.pop(block_hash, 0)
            self._known.pop(block_hash, None)
        ok, removed = self._call("DEL", self._client.delete, self._key(block_hash))
        return bool(ok and removed)

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
        try:
            self._client.close()
        except self._errors:
            pass
