import hashlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from kvtier.block.hashing import (
    hash_block_tokens,
    hash_blocks,
    namespace_digest,
    token_bytes,
)

NS = namespace_digest("llama-3-8b:abc", "tenant-a")


def test_known_digests():
    # Pinned: these digests must never change across processes, machines or Python versions,
    # or every cache written so far stops hitting. Changing them needs a format version bump.
    assert NS.hex() == "9b875829166c70b0d2b9b9081a104f8429bca63a32fba101bb094617666438ce"
    assert hash_blocks(NS, list(range(32)), 16)[1].hex() == (
        "bf4c1e9d2a7cd1ea27d6abb90cb2b5e773bfbce035c781b92d1163018cad8a12")


def test_digests_follow_the_documented_formula():
    field = lambda b: struct.pack("<Q", len(b)) + b
    ns = hashlib.sha256(b"kvtier/namespace/v1" + field(b"llama-3-8b:abc") + b"\x01" + field(b"tenant-a")).digest()
    first = hashlib.sha256(ns + field(b"") + struct.pack("<16Q", *range(16))).digest()
    second = hashlib.sha256(first + field(b"") + struct.pack("<16Q", *range(16, 32))).digest()
    assert [ns, first, second] == [NS, *hash_blocks(NS, list(range(32)), 16)]


def test_digest_is_stable_across_processes():
    code = ("from kvtier.block.hashing import hash_blocks, namespace_digest;"
            "print(hash_blocks(namespace_digest('m', 's'), list(range(48)), 16)[-1].hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert out == hash_blocks(namespace_digest("m", "s"), list(range(48)), 16)[-1].hex()


def test_chain_depends_on_every_earlier_token():
    base = hash_blocks(NS, list(range(64)), 16)
    changed = hash_blocks(NS, [999] + list(range(1, 64)), 16)
    assert all(a != b for a, b in zip(base, changed))


def test_equal_prefixes_share_hashes_and_partial_tail_is_not_hashed():
    a = hash_blocks(NS, list(range(40)), 16)
    b = hash_blocks(NS, list(range(32)) + [7] * 15, 16)
    assert len(a) == 2 and a == b


def test_tenant_salt_and_model_separate_namespaces():
    toks = list(range(16))
    digests = {hash_blocks(namespace_digest(m, s), toks, 16)[0]
               for m in ("model-a", "model-b") for s in (None, "", "t1", "t2")}
    assert len(digests) == 8


def test_extra_keys_change_the_hash():
    toks = list(range(16))
    assert hash_blocks(NS, toks, 16)[0] != hash_blocks(NS, toks, 16, extra_keys=b"lora-1")[0]


def test_block_size_cannot_alias_with_extra_keys():
    # 32 tokens at block_size 32 must not equal 16 tokens with crafted extra keys
    toks = list(range(32))
    crafted = token_bytes(toks[1:16])
    assert hash_blocks(NS, toks, 32)[0] != hash_block_tokens(NS, toks[16:], extra_keys=crafted)


def test_numpy_ints_hash_like_python_ints():
    toks = list(range(16))
    assert hash_blocks(NS, np.arange(16, dtype=np.int64).tolist(), 16) == hash_blocks(NS, toks, 16)
    assert hash_blocks(NS, list(np.arange(16)), 16) == hash_blocks(NS, toks, 16)


@pytest.mark.parametrize("bad", [[1.5], ["7"], [None], [-1], [2**64]])
def test_non_integer_or_out_of_range_tokens_raise_value_error(bad):
    with pytest.raises(ValueError, match="token ids must be integers"):
        hash_blocks(NS, bad * 16, 16)


def test_bad_parent_length_raises():
    with pytest.raises(ValueError, match="parent hash must be 32 bytes, got 3"):
        hash_blocks(b"abc", [1] * 16, 16)
