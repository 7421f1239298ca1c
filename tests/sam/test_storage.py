"""One-file index format: exact round trip through a memory map, and one clear ValueError (naming
the file and the fix) for every kind of bad file or bad input (DESIGN.md §9)."""

from __future__ import annotations

import json
import pathlib
import struct
import zlib

import numpy as np
import pytest
import torch

from samgpu.sam import ARRAY_NAMES, FORMAT_VERSION, MAGIC, SamIndex, read_header
from samgpu.sam.storage import TOKEN_ARRAYS


@pytest.fixture(scope="module")
def index() -> SamIndex:
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 7, size=int(rng.integers(1, 40))) for _ in range(30)]
    return SamIndex.build(docs, vocab_size=11, eos_id=3, tokenizer_fingerprint="fp-abc")


@pytest.fixture
def saved(index, tmp_path):
    return index.save(tmp_path / "x.samidx")


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_round_trip_is_exact(index, saved, mmap):
    loaded = SamIndex.load(saved, mmap=mmap)
    assert loaded.equal(index)
    assert loaded.tokenizer_fingerprint == "fp-abc" and loaded.eos_id == 3
    assert loaded.extra == index.extra == {"corpus_tokens": index.num_tokens - 2 * 11 + 1}
    assert loaded.build_info == {}  # timings are not saved: same corpus, same bytes
    loaded.validate()
    assert loaded.longest_match([1, 2, 3]) == index.longest_match([1, 2, 3])
    for name in ARRAY_NAMES:
        t = getattr(loaded, name)
        assert t.dtype == torch.int32 and t.ndim == 1 and t.is_contiguous()


def test_mmap_load_maps_the_file_instead_of_copying(saved):
    maps = pathlib.Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps (Linux)")
    loaded = SamIndex.load(saved, mmap=True)
    ranges = [
        [int(x, 16) for x in line.split()[0].split("-")]
        for line in maps.read_text().splitlines()
        if line.endswith(str(saved))
    ]
    for name in ARRAY_NAMES:
        ptr = getattr(loaded, name).data_ptr()
        mapped = any(lo <= ptr < hi for lo, hi in ranges)
        # token arrays are uint16 in the file (small vocabulary) and widened to int32 on load
        assert mapped == (name not in TOKEN_ARRAYS), f"{name}: mapped={mapped}"
    # Copy-on-write: writing to a loaded tensor never reaches the file.
    before = saved.read_bytes()
    loaded.length[0] = 5
    del loaded
    assert saved.read_bytes() == before


def test_arrays_are_64_byte_aligned(saved):
    meta = read_header(saved)
    assert [e["name"] for e in meta["arrays"]] == list(ARRAY_NAMES)
    assert all(e["offset"] % 64 == 0 for e in meta["arrays"])
    assert meta["file_size"] == saved.stat().st_size


def test_same_corpus_gives_identical_files(index, saved, tmp_path):
    again = SamIndex.build(
        [index.tokens[: index.extra["corpus_tokens"]].numpy()],
        vocab_size=11,
        eos_id=3,
        tokenizer_fingerprint="fp-abc",
    )
    assert again.save(tmp_path / "again.samidx").read_bytes() == saved.read_bytes()


def test_save_is_atomic_and_overwrites(index, tmp_path):
    path = tmp_path / "sub" / "y.samidx"
    index.save(path)
    index.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["y.samidx"]


def _expect(path, *words):
    with pytest.raises(ValueError) as err:
        SamIndex.load(path)
    msg = str(err.value)
    assert str(path) in msg and "samgpu index build" in msg, msg
    for w in words:
        assert w in msg, msg


def test_truncated_file(saved):
    data = saved.read_bytes()
    for cut in (0, 10, 100, len(data) - 1):
        saved.write_bytes(data[:cut])
        _expect(saved, "truncated")


def test_corrupted_payload_byte(saved):
    data = bytearray(saved.read_bytes())
    meta = read_header(saved)
    entry = next(e for e in meta["arrays"] if e["name"] == "edge_dst")
    data[entry["offset"] + 5] ^= 0x40
    saved.write_bytes(bytes(data))
    _expect(saved, "checksum", "edge_dst")


def test_corrupted_header_byte(saved):
    data = bytearray(saved.read_bytes())
    data[40] ^= 0x01
    saved.write_bytes(bytes(data))
    _expect(saved, "header")


def test_wrong_magic(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[:8] = b"NOTANIDX"
    saved.write_bytes(bytes(data))
    _expect(saved, "not a samgpu SAM index")
    other = tmp_path / "notes.txt"
    other.write_text("hello, this is not an index at all")
    _expect(other, "not a samgpu SAM index")


def test_version_mismatch(saved):
    data = bytearray(saved.read_bytes())
    data[8:12] = struct.pack("<I", FORMAT_VERSION + 1)
    saved.write_bytes(bytes(data))
    _expect(saved, f"version {FORMAT_VERSION + 1}")


def _rewrite_header(path, edit, version=None):
    """Patch the JSON header in place (`edit(meta)`), keeping the arrays where they are."""
    data = path.read_bytes()
    magic, old_version, hlen, _ = struct.unpack("<8sIII", data[:20])
    meta = json.loads(data[20 : 20 + hlen])
    edit(meta)
    header = json.dumps(meta, sort_keys=True).encode().ljust(hlen)  # may grow into the padding
    assert 20 + len(header) <= min(e["offset"] for e in meta["arrays"])
    prefix = struct.pack("<8sIII", magic, version or old_version, len(header), zlib.crc32(header))
    path.write_bytes(prefix + header + data[20 + len(header) :])


def test_token_arrays_are_uint16_when_the_vocabulary_fits(index, saved, tmp_path):
    """vocab_size <= 65,536: edge_token and tokens are stored as uint16 (2 bytes less per edge and
    per token), widened to the same int32 values on load; a larger vocabulary keeps int32."""
    dtypes = {e["name"]: e["dtype"] for e in read_header(saved)["arrays"]}
    assert dtypes == {n: "uint16" if n in TOKEN_ARRAYS else "int32" for n in ARRAY_NAMES}
    wide = SamIndex.build(
        [[70_000, 1, 65_536], [1, 2]], vocab_size=70_001, eos_id=3, tokenizer_fingerprint="w"
    )
    wide_path = wide.save(tmp_path / "wide.samidx")
    assert {e["dtype"] for e in read_header(wide_path)["arrays"]} == {"int32"}
    assert SamIndex.load(wide_path).equal(wide)
    # the same index with its largest ids just inside uint16 round-trips exactly
    edge = SamIndex.build(
        [[65_535, 1, 65_534], [1, 65_535]], vocab_size=65_536, eos_id=3, tokenizer_fingerprint="e"
    )
    assert SamIndex.load(edge.save(tmp_path / "edge.samidx")).equal(edge)
    narrow_bytes = sum(4 * getattr(index, n).numel() for n in ARRAY_NAMES)
    saved_bytes = sum(
        e["count"] * (2 if e["dtype"] == "uint16" else 4) for e in read_header(saved)["arrays"]
    )
    assert saved_bytes == narrow_bytes - 2 * (index.num_edges + index.num_tokens)


def test_version_1_files_still_load(index, saved):
    """A version 1 file (every array int32, no dtype keys) loads as before."""
    v1 = SamIndex.build([[1, 2, 3], [1, 2]], vocab_size=70_000, eos_id=3, tokenizer_fingerprint="x")
    path = v1.save(saved.parent / "v1.samidx")  # large vocabulary: all int32, as version 1 wrote

    def drop_dtypes(meta):
        for e in meta["arrays"]:
            del e["dtype"]

    _rewrite_header(path, drop_dtypes, version=1)
    assert struct.unpack("<I", path.read_bytes()[8:12]) == (1,)
    assert SamIndex.load(path).equal(v1)


def test_unknown_or_misplaced_dtype(saved):
    """A dtype the format does not know, or uint16 for an array that is not a token array."""
    data = saved.read_bytes()
    for name, dtype in (("length", "float64"), ("edge_dst", "uint16")):

        def bad_dtype(meta, name=name, dtype=dtype):
            next(e for e in meta["arrays"] if e["name"] == name)["dtype"] = dtype

        _rewrite_header(saved, bad_dtype)
        _expect(saved, "dtype", name)
        saved.write_bytes(data)


def test_trailing_garbage(saved):
    saved.write_bytes(saved.read_bytes() + b"\0" * 64)
    _expect(saved, "trailing")


def test_header_lies_about_sizes(saved):
    """A well-formed header whose counts disagree (e.g. written by a buggy tool) is caught."""
    data = saved.read_bytes()
    magic, version, hlen, _ = struct.unpack("<8sIII", data[:20])
    meta = json.loads(data[20 : 20 + hlen])
    meta["arrays"][1]["count"] -= 1  # link one shorter than length
    meta["arrays"][1]["crc32"] = zlib.crc32(
        np.frombuffer(data, np.int32, meta["arrays"][1]["count"], meta["arrays"][1]["offset"])
    )
    header = json.dumps(meta, sort_keys=True).encode().ljust(hlen)
    patched = struct.pack("<8sIII", magic, version, hlen, zlib.crc32(header)) + header
    saved.write_bytes(patched + data[len(patched) :])
    _expect(saved, "invalid", "disagree on num_states")


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        SamIndex.load(tmp_path / "nope.samidx")


def test_magic_constant():
    assert MAGIC == b"SAMGPUIX"


def test_tokenizer_mismatch_is_a_clear_error(saved):
    loaded = SamIndex.load(saved)
    loaded.check_tokenizer("fp-abc", saved)  # same tokenizer: fine
    with pytest.raises(ValueError) as err:
        loaded.check_tokenizer("fp-other", saved)
    msg = str(err.value)
    assert "built for tokenizer" in msg and str(saved) in msg and "samgpu index build" in msg


# --------------------------------------------------------------------------- bad build input
def test_empty_corpus():
    for docs in ([], [[]], [np.array([], dtype=np.int32)] * 3):
        with pytest.raises(ValueError, match="empty corpus"):
            SamIndex.build(docs, vocab_size=4, eos_id=0)
    with pytest.raises(ValueError, match="empty corpus"):
        SamIndex.from_text_arrays(np.array([], np.int32), np.array([0, 0]), vocab_size=4, eos_id=0)


@pytest.mark.parametrize("bad", [-1, 4, 2**31 - 1])
def test_document_ids_outside_vocab(bad):
    with pytest.raises(ValueError, match=f"token id {bad} outside the vocabulary"):
        SamIndex.build([[0, 1], [2, bad]], vocab_size=4, eos_id=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        SamIndex.from_text_arrays(np.array([0, bad]), np.array([0, 2]), vocab_size=4, eos_id=0)


def test_query_ids_outside_vocab(index):
    with pytest.raises(ValueError, match="token id 11 outside the vocabulary"):
        index.longest_match([1, 11])
    with pytest.raises(ValueError, match="token id -1 outside"):
        index.longest_match([-1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vocab_size": 0, "eos_id": 0}, "vocab_size"),
        ({"vocab_size": 4, "eos_id": 4}, "eos_id"),
        ({"vocab_size": 4, "eos_id": -1}, "eos_id"),
    ],
)
def test_bad_vocab_or_eos(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamIndex.build([[1]], **kwargs)


def test_bad_document_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"document 1 must be 1-D token ids, got shape \(2, 2\)"):
        SamIndex.build([[1], [[1, 2], [3, 0]]], vocab_size=4, eos_id=0)
    with pytest.raises(ValueError, match="integer token ids"):
        SamIndex.build([[1.5, 2.0]], vocab_size=4, eos_id=0)
    with pytest.raises(ValueError, match="doc_offsets"):
        SamIndex.from_text_arrays(np.array([1, 2]), np.array([0, 3]), vocab_size=4, eos_id=0)


def test_validate_catches_broken_arrays(index):
    for name, mutate, match in [
        ("edge_token", lambda t: t.flip(0), "edge_token"),
        ("edge_offsets", lambda t: t - 1, "edge_offsets"),
        ("count", lambda t: t * 0, "count"),
        ("link", lambda t: torch.zeros_like(t), "root"),
        ("root_next", lambda t: t.roll(1), "root_next"),
        ("tokens", lambda t: t.to(torch.int64), "int32"),
    ]:
        arrays = {n: getattr(index, n).clone() for n in ARRAY_NAMES}
        arrays[name] = mutate(arrays[name])
        bad = SamIndex(**arrays, vocab_size=index.vocab_size, eos_id=index.eos_id)
        with pytest.raises(ValueError, match=match):
            bad.validate()


def test_corrupt_index_advice_never_writes_over_the_file(tmp_path):
    """The fix a damaged index's error suggests builds a NEW file: `--out <the same path>` would
    overwrite what the user asked us to read."""
    import numpy as np
    import pytest

    from samgpu.sam import SamIndex

    path = SamIndex.build([np.array([3, 4, 3], dtype=np.int32)], vocab_size=8, eos_id=0).save(
        tmp_path / "i.samidx"
    )
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError) as err:
        SamIndex.load(path)
    assert "build a new index" in str(err.value)
    assert f"--out {path}" not in str(err.value)
