"""The store file (samgpu/drafters/parts/store_file.py): round trip, uint16 / int32 token arrays,
the host eviction rule, and one negative control per load check (each damage is a ValueError
naming the file and the fix), plus atomic writes that leave no temporaries."""

import json
import os
import struct
import zlib

import numpy as np
import pytest

from samgpu.drafters.parts.store_file import (
    MAGIC,
    read_store_file,
    read_store_header,
    save_store_file,
    surviving_start,
)

DOCS = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9]]


def _saved(tmp_path, vocab=10, fingerprint="fp-a", docs=DOCS):
    return save_store_file(
        tmp_path / "s.samstore", docs, vocab_size=vocab, tokenizer_fingerprint=fingerprint
    )


def test_round_trip_and_dtypes(tmp_path):
    """Empty documents are dropped; ids as uint16 for <= 65,536 ids, else int32."""
    for vocab, dtype in ((10, "uint16"), (70000, "int32")):
        path = _saved(tmp_path, vocab=vocab, docs=DOCS + [[vocab - 1]])
        f = read_store_file(path, vocab_size=vocab, tokenizer_fingerprint="fp-a")
        assert [d.tolist() for d in f.documents()] == [[1, 2, 3], [4], [5, 6, 7, 8, 9], [vocab - 1]]
        meta = read_store_header(path)
        assert meta["arrays"][1]["dtype"] == dtype and meta["num_docs"] == 4
    assert read_store_file(_saved(tmp_path, fingerprint="")).num_docs == 3  # unknown: not checked
    empty = save_store_file(tmp_path / "e.samstore", [], vocab_size=5)
    assert read_store_file(empty).num_docs == 0


def test_surviving_start_golden():
    """C = 8: docs of 3, 3 (4 + 4 = 8 fit), 2 (new generation), 6 (new: evicts the first),
    20 (cut to 7, new: evicts the second): the last two generations start at docs 3 and 4."""
    assert surviving_start([3, 3], 8) == 0
    assert surviving_start([3, 3, 2], 8) == 0
    assert surviving_start([3, 3, 2, 6], 8) == 2
    assert surviving_start([3, 3, 2, 6, 20], 8) == 3
    assert surviving_start([0, 0, 3], 8) == 0


def _rewrite(path, mutate):
    raw = bytearray(path.read_bytes())
    mutate(raw)
    path.write_bytes(bytes(raw))


def _patch_header(path, change):
    """Rewrite the JSON header (with a valid CRC) after change(meta); the arrays keep their
    offsets (the writer leaves >= 64 spare bytes before the first one)."""
    raw = path.read_bytes()
    magic, version, hlen, _ = struct.unpack("<8sIII", raw[:20])
    meta = json.loads(raw[20 : 20 + hlen])
    first = meta["arrays"][0]["offset"]
    change(meta)
    header = json.dumps(meta, sort_keys=True).encode()
    assert 20 + len(header) <= first
    prefix = struct.pack("<8sIII", magic, version, len(header), zlib.crc32(header))
    path.write_bytes(prefix + header + raw[20 + len(header) :])


def _token_offset(path):
    return read_store_header(path)["arrays"][1]["offset"]


DAMAGE = {
    "magic": (lambda p: _rewrite(p, lambda r: r.__setitem__(slice(0, 8), b"NOTSTORE")), "magic"),
    "version": (lambda p: _rewrite(p, lambda r: r.__setitem__(slice(8, 12), b"\x09\0\0\0")), "ver"),
    "header crc": (lambda p: _rewrite(p, lambda r: r.__setitem__(25, r[25] ^ 1)), "corrupt header"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-70]), "truncated"),
    "tiny": (lambda p: p.write_bytes(MAGIC[:5]), "truncated"),
    "trailing": (lambda p: p.write_bytes(p.read_bytes() + b"x"), "trailing"),
    "payload crc": (
        lambda p: _rewrite(p, lambda r: r.__setitem__(_token_offset(p), r[_token_offset(p)] ^ 1)),
        "checksum",
    ),
    "missing key": (lambda p: _patch_header(p, lambda m: m.pop("num_docs")), "malformed"),
    "bad count": (lambda p: _patch_header(p, lambda m: m.update(num_tokens=3)), "malformed"),
    "bad dtype": (
        lambda p: _patch_header(p, lambda m: m["arrays"][0].update(dtype="float32")),
        "malformed",
    ),
    "outside": (
        lambda p: _patch_header(p, lambda m: m["arrays"][1].update(offset=10**6)),
        "malformed",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_file_is_a_clear_error(damage, tmp_path):
    path = _saved(tmp_path)
    read_store_file(path, vocab_size=10)  # the intact file loads
    do, match = DAMAGE[damage]
    do(path)
    with pytest.raises(ValueError, match=match) as err:
        read_store_file(path, vocab_size=10)
    assert str(path) in str(err.value) and "samgpu store build" in str(err.value)


def _resave_payload(path, offsets=None, tokens=None):
    """Rewrite arrays with valid checksums (so only the value checks can catch the damage)."""
    meta = read_store_header(path)
    raw = bytearray(path.read_bytes())
    for e, new in zip(meta["arrays"], (offsets, tokens), strict=True):
        if new is None:
            continue
        arr = np.asarray(new, dtype=e["dtype"])
        raw[e["offset"] : e["offset"] + arr.nbytes] = arr.tobytes()
        e["crc32"] = zlib.crc32(arr.tobytes())
    path.write_bytes(bytes(raw))
    _patch_header(path, lambda m: m.update(arrays=meta["arrays"]))


def test_value_checks(tmp_path):
    """Checksummed but wrong values: offsets that do not cut the tokens, ids outside the
    vocabulary; then the model checks: another vocabulary size, another tokenizer."""
    path = _saved(tmp_path)
    _resave_payload(path, offsets=[0, 3, 2, 9])
    with pytest.raises(ValueError, match="offsets"):
        read_store_file(path)
    path = _saved(tmp_path)
    _resave_payload(path, tokens=[1, 2, 3, 4, 5, 6, 7, 8, 12])
    with pytest.raises(ValueError, match="outside"):
        read_store_file(path)
    path = _saved(tmp_path)
    assert read_store_file(path, vocab_size=11).num_docs == 3  # a padded embedding is fine
    with pytest.raises(ValueError, match="vocabulary of 10 ids, the model has 9"):
        read_store_file(path, vocab_size=9)
    with pytest.raises(ValueError, match="another tokenizer"):
        read_store_file(path, vocab_size=10, tokenizer_fingerprint="fp-b")
    with pytest.raises(ValueError, match="does not exist"):
        read_store_file(tmp_path / "nope.samstore")
    with pytest.raises(ValueError, match="outside"):
        save_store_file(tmp_path / "x.samstore", [[10]], vocab_size=10)


def test_atomic_write_leaves_no_temporaries(tmp_path):
    """Saving over an existing file replaces it by rename; a dead writer's temporary (this host,
    a pid that does not exist) is removed by the next save."""
    path = _saved(tmp_path)
    stale = tmp_path / f".{path.name}.tmp-{_host()}-999999999-abc"
    stale.write_bytes(b"junk")
    _saved(tmp_path, docs=[[7]])
    assert sorted(os.listdir(tmp_path)) == [path.name]
    assert [d.tolist() for d in read_store_file(path).documents()] == [[7]]


def _host():
    from samgpu import files

    return files.host_tag()
