"""Index files that lie (issue 13, part 1): checksums right, values wrong. Every check of
samgpu/sam/_validate.py refuses a file crafted to break it alone (its negative control), with one
ValueError naming the file; the hole each check closes is shown in a forked child with validation
switched off (a hang, a segfault); malformed headers are one clean error, never a KeyError /
TypeError / OverflowError; and a hypothesis fuzz over array values and header fields finds only
clean refusals or indices that pass the brute-force oracles (tests/sam/_brute.py)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samgpu.sam import ARRAY_NAMES, SamIndex, read_header
from samgpu.sam import _validate as V
from tests._fork import HANG, in_child

from . import _craft
from ._brute import expected_text, link_walks_end, longest_suffix_match, structural_problems

DOCS = [[1, 2, 3, 1, 2, 4], [2, 3, 5, 2, 3], [4, 4, 1, 2]]
VOCAB, EOS = 6, 0


def cases(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@pytest.fixture(scope="module")
def index() -> SamIndex:
    return SamIndex.build(DOCS, vocab_size=VOCAB, eos_id=EOS)


@pytest.fixture(scope="module")
def good(index) -> dict[str, np.ndarray]:
    return _craft.arrays_of(index)


def codes(a: dict[str, np.ndarray], vocab_size: int = VOCAB, deep: bool = False) -> tuple:
    args = [np.ascontiguousarray(a[n], dtype=np.int32) for n in ARRAY_NAMES]
    fast = bool(V.sam_is_valid(*args, vocab_size))
    code, where = V.sam_validate(*args, vocab_size, deep)
    return fast, int(code), int(where)


# --------------------------------------------------------------------------- one file per check
def _state_with(a, pred) -> int:
    return next(s for s in range(1, a["length"].size) if pred(s))


def _leaf(a) -> int:
    """A non-root state no other state links to."""
    linked = set(a["link"].tolist())
    return _state_with(a, lambda s: s not in linked)


def _multi_edge_state(a) -> int:
    off = a["edge_offsets"]
    return _state_with(a, lambda s: off[s + 1] - off[s] >= 2)


def _drop_root_edge(a):
    a["edge_offsets"][1:] -= 1
    a["edge_token"] = np.delete(a["edge_token"], VOCAB - 1)
    a["edge_dst"] = np.delete(a["edge_dst"], VOCAB - 1)


def _swap_edges(a):
    k = a["edge_offsets"][_multi_edge_state(a)]
    a["edge_token"][[k, k + 1]] = a["edge_token"][[k + 1, k]]


def _self_edge(a):
    s = _state_with(a, lambda s: a["edge_offsets"][s + 1] > a["edge_offsets"][s])
    a["edge_dst"][a["edge_offsets"][s]] = s


def _set(name, pos, value):
    def mutate(a):
        p = pos(a) if callable(pos) else pos
        a[name][p] = value(a) if callable(value) else value

    return mutate


def _offsets_decrease(a):
    s = _state_with(a, lambda s: a["edge_offsets"][s] > 0)
    a["edge_offsets"][s + 1] = a["edge_offsets"][s] - 1


def _cycle(a):
    """Two states linking to each other (the matcher would climb between them for ever)."""
    s = _leaf(a)
    a["link"][a["link"][s]] = s


# (id, mutation, expected code, words in the message); fast-level codes refuse the load.
CHECKS = [
    ("root", _set("length", 0, 1), V.ROOT, "not a root"),
    ("root-count", _set("count", 0, 0), V.ROOT, "count 0;"),
    ("tokens-high", _set("tokens", 3, VOCAB), V.TOKENS, "tokens[3] = 6"),
    ("tokens-negative", _set("tokens", 0, -1), V.TOKENS, "tokens[0] = -1"),
    ("offsets-start", _set("edge_offsets", 0, 1), V.OFFSETS_START, "edge_offsets[0] = 1"),
    (
        "offsets-end",
        _set("edge_offsets", -1, lambda a: a["edge_token"].size - 1),
        V.OFFSETS_END,
        "expected num_edges",
    ),
    ("offsets-order", _offsets_decrease, V.OFFSETS_ORDER, "edge_offsets decreases"),
    ("link-range", _set("link", 2, lambda a: a["length"].size), V.LINK_RANGE, "link[2]"),
    ("link-self", _set("link", 3, 3), V.LINK_LENGTH, "link[3] = 3 is not shorter"),
    ("link-cycle", _cycle, V.LINK_LENGTH, "a cycle fails here"),
    (
        "endpos-range",
        _set("endpos", 2, lambda a: a["tokens"].size),
        V.ENDPOS_RANGE,
        "endpos[2]",
    ),
    (
        "endpos-length",
        _set("endpos", lambda a: _state_with(a, lambda s: a["length"][s] >= 2), 0),
        V.ENDPOS_LENGTH,
        "exceeds endpos",
    ),
    ("count-zero", _set("count", 4, 0), V.COUNT_MIN, "count[4] = 0"),
    ("edge-token-range", _set("edge_token", VOCAB - 1, VOCAB), V.EDGE_TOKEN, "edge_token[5] = 6"),
    ("edge-order", _swap_edges, V.EDGE_ORDER, "not strictly increasing"),
    (
        "edge-dst-range",
        _set("edge_dst", -1, lambda a: a["length"].size),
        V.EDGE_DST,
        "edge_dst",
    ),
    ("edge-dst-root", _set("edge_dst", 2, 0), V.EDGE_DST, "edge_dst[2] = 0"),
    ("root-degree", _drop_root_edge, V.ROOT_DEGREE, "the root has 5 edges"),
    ("root-next", _set("root_next", 1, lambda a: a["root_next"][2]), V.ROOT_NEXT, "root_next[1]"),
]
DEEP_CHECKS = [
    ("count-sum", _set("count", _leaf, lambda a: a["count"][_leaf(a)] + 1), V.COUNT_SUM, "count"),
    ("edge-length", _self_edge, V.EDGE_LENGTH, "not longer"),
]


def test_built_and_saved_indices_pass_every_level(index, good, tmp_path):
    """The control of the controls: a real index passes both levels and both oracles."""
    assert codes(good) == (True, V.OK, 0)
    assert codes(good, deep=True) == (True, V.OK, 0)
    assert structural_problems(good, VOCAB, EOS, deep=True) == []
    loaded = SamIndex.load(index.save(tmp_path / "ok.samidx"))
    assert loaded.is_validated and loaded.equal(index)
    loaded.validate(deep=True)


@pytest.mark.parametrize("mutate, code, words", [c[1:] for c in CHECKS], ids=[c[0] for c in CHECKS])
def test_each_check_refuses_a_file_crafted_to_break_it(good, tmp_path, mutate, code, words):
    a = {n: x.copy() for n, x in good.items()}
    mutate(a)
    assert codes(a)[:2] == (False, code)  # exactly this check fires first, the fast path agrees
    assert structural_problems(a, VOCAB, EOS)  # and the independent oracle sees a problem
    path = _craft.write(tmp_path / "bad.samidx", a, VOCAB, EOS)
    with pytest.raises(ValueError) as err:
        SamIndex.load(path)
    msg = str(err.value)
    assert str(path) in msg and "is invalid" in msg and "samgpu index build" in msg, msg
    assert words in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "mutate, code, words", [c[1:] for c in DEEP_CHECKS], ids=[c[0] for c in DEEP_CHECKS]
)
def test_deep_checks_refuse_on_request(good, tmp_path, mutate, code, words):
    """Consistency beyond safety: the load (fast level) accepts, validate(deep=True) refuses."""
    a = {n: x.copy() for n, x in good.items()}
    mutate(a)
    assert codes(a) == (True, V.OK, 0)
    assert codes(a, deep=True)[1] == code
    assert structural_problems(a, VOCAB, EOS) == []
    assert structural_problems(a, VOCAB, EOS, deep=True)
    loaded = SamIndex.load(_craft.write(tmp_path / "deep.samidx", a, VOCAB, EOS))
    with pytest.raises(ValueError, match=words):
        loaded.validate(deep=True)


def test_in_memory_index_is_checked_before_use(index):
    """resolve.load_index (the API path) validates a SamIndex object it did not load, once."""
    from samgpu.errors import InputError
    from samgpu.resolve import load_index

    assert load_index(index) is index  # built in this process: flagged valid, no second pass
    arrays = {n: getattr(index, n).clone() for n in ARRAY_NAMES}
    arrays["edge_dst"][0] = 10**6
    bad = SamIndex(**arrays, vocab_size=VOCAB, eos_id=EOS)
    with pytest.raises(InputError, match=r"edge_dst\[0\] = 1000000"):
        load_index(bad)


# --------------------------------------------------------------------------- holes, in a subprocess
def _load_and_match(path: Path, query: list[int], *, validate: bool):
    """What a run does with an index file: load it, match the committed text."""
    if not validate:  # the negative control: the load path without the validation
        SamIndex.find_problem = lambda self, deep=True: None  # (in the forked child only)
    try:
        index = SamIndex.load(path)
    except ValueError as exc:
        return f"refused {exc}"
    return index.longest_match(query)


def _cycle_file(index, good, tmp_path) -> tuple[Path, list[int]]:
    """States s and link[s] linking to each other, and a query that makes the matcher climb from
    s on a token neither has an edge for."""
    a = {n: x.copy() for n, x in good.items()}
    off, tok = a["edge_offsets"], a["edge_token"]
    text = expected_text(DOCS, VOCAB, EOS)
    for end in range(len(text)):
        for start in range(end + 1):
            q = text[start : end + 1]
            s, _ = index.match_state(q)
            lk = int(a["link"][s])
            if s == 0 or lk == 0:
                continue
            labels = set(tok[off[s] : off[s + 1]].tolist() + tok[off[lk] : off[lk + 1]].tolist())
            missing = [t for t in range(VOCAB) if t not in labels]
            if missing:
                a["link"][lk] = s
                return _craft.write(tmp_path / "cycle.samidx", a, VOCAB, EOS), [*q, missing[0]]
    raise AssertionError("no state pair to make a cycle from")


def test_the_holes_hang_or_crash_without_validation_and_are_refused_with_it(index, good, tmp_path):
    """Cyclic suffix links: longest_match loops for ever. edge_dst 8 GB out of range: SIGSEGV.
    With the validation both loads are one clean refusal (in a forked child all the same)."""
    cycle = _cycle_file(index, good, tmp_path)  # (path, query)
    a = {n: x.copy() for n, x in good.items()}
    a["edge_dst"][VOCAB:] = 2**31 - 1  # every non-root edge
    oob = (_craft.write(tmp_path / "oob.samidx", a, VOCAB, EOS), [1, 2, 3])
    # the walk loops within microseconds: a second without an answer is a hang
    status, out = in_child(lambda: _load_and_match(*cycle, validate=False), timeout=1)
    assert status == HANG, (status, out)
    status, out = in_child(lambda: _load_and_match(*oob, validate=False), timeout=30)
    assert isinstance(status, int) and status < 0, (status, out)  # killed by a signal
    for (path, query), words in ((cycle, "a cycle fails here"), (oob, "edge_dst")):
        status, out = in_child(
            lambda p=path, q=query: _load_and_match(p, q, validate=True), timeout=30
        )
        assert status == 0 and out.startswith("refused") and words in out, (status, out)


# --------------------------------------------------------------------------- malformed headers
def _prefix_with_header_len(n: int):
    def build(good) -> bytes:
        data = bytearray(_craft.file_bytes(good, VOCAB, EOS))
        data[12:16] = struct.pack("<I", n)
        return bytes(data)

    return build


def _edit(fn):
    return lambda good: _craft.file_bytes(good, VOCAB, EOS, header_edit=fn)


def _raw(text: bytes):
    return lambda good: _craft.file_bytes(good, VOCAB, EOS, raw_header=text)


def _entry(i: int, key: str, value):
    def edit(meta):
        meta["arrays"][i][key] = value

    return edit


def _top(key: str, value):
    def edit(meta):
        meta[key] = value

    return edit


def _delete(key: str, i: int | None = None):
    def edit(meta):
        del (meta if i is None else meta["arrays"][i])[key]

    return edit


BAD_HEADERS = {
    **{f"missing-{k}": _edit(_delete(k)) for k in ("vocab_size", "eos_id", "file_size", "arrays")},
    "missing-fingerprint": _edit(_delete("tokenizer_fingerprint")),
    "missing-count": _edit(_delete("count", 2)),
    "missing-offset": _edit(_delete("offset", 0)),
    "missing-crc": _edit(_delete("crc32", 5)),
    "missing-dtype-v2": _edit(_delete("dtype", 1)),
    "vocab-string": _edit(_top("vocab_size", "6")),
    "vocab-float": _edit(_top("vocab_size", 6.0)),
    "vocab-bool": _edit(_top("vocab_size", True)),
    "vocab-zero": _edit(_top("vocab_size", 0)),
    "vocab-huge": _edit(_top("vocab_size", 10**30)),
    "vocab-inf": _edit(_top("vocab_size", math.inf)),
    "eos-outside-vocab": _edit(_top("eos_id", VOCAB)),
    "eos-negative": _edit(_top("eos_id", -1)),
    "eos-null": _edit(_top("eos_id", None)),
    "file-size-huge": _edit(_top("file_size", 2**70)),
    "file-size-negative": _edit(_top("file_size", -1)),
    "fingerprint-number": _edit(_top("tokenizer_fingerprint", 5)),
    "extra-list": _edit(_top("extra", [1])),
    "arrays-object": _edit(_top("arrays", {"length": 1})),
    "arrays-short": _edit(lambda m: m["arrays"].pop()),
    "arrays-strings": _edit(_top("arrays", [n for n in ARRAY_NAMES])),
    "arrays-renamed": _edit(_entry(3, "name", "counts")),
    "arrays-swapped": _edit(lambda m: m["arrays"].insert(0, m["arrays"].pop(1))),
    "count-string": _edit(_entry(2, "count", "3")),
    "count-negative": _edit(_entry(2, "count", -1)),
    "count-int32-overflow": _edit(_entry(8, "count", 2**31)),
    "count-2**64": _edit(_entry(8, "count", 2**64)),
    "count-nan": _edit(_entry(8, "count", math.nan)),
    "offset-unaligned": _edit(lambda m: m["arrays"][4].update(offset=m["arrays"][4]["offset"] + 4)),
    "offset-negative": _edit(_entry(0, "offset", -64)),
    "offset-in-header": _edit(_entry(0, "offset", 0)),
    "offset-overlap": _edit(lambda m: m["arrays"][1].update(offset=m["arrays"][0]["offset"])),
    "offset-past-end": _edit(_entry(8, "offset", 2**40)),
    "crc-negative": _edit(_entry(5, "crc32", -1)),
    "crc-33-bits": _edit(_entry(5, "crc32", 2**32)),
    "dtype-float": _edit(_entry(0, "dtype", "float64")),
    "dtype-u16-not-token-array": _edit(_entry(6, "dtype", "uint16")),
    "dtype-list": _edit(_entry(6, "dtype", ["int32"])),
    "header-not-json": _raw(b"{not json"),
    "header-array": _raw(b"[1, 2, 3]"),
    "header-null": _raw(b"null"),
    "header-nested-100k": _raw(b"[" * 100_000 + b"]" * 100_000),
    "header-not-utf8": _raw(b'{"vocab_size": "\xff\xfe"}'),
    "header-5000-digit-int": _raw(b'{"vocab_size": ' + b"9" * 5000 + b"}"),
    "header-nan": _raw(b'{"vocab_size": NaN}'),
    "header-length-4gb": _prefix_with_header_len(2**32 - 1),
    "header-length-past-file": _prefix_with_header_len(10**6),
    "header-length-zero": _prefix_with_header_len(0),
}


@pytest.mark.parametrize("make", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_malformed_header_is_one_clean_error(good, tmp_path, make):
    """Missing keys, wrong types, absurd sizes: a ValueError naming the file and the fix, never a
    KeyError / TypeError / OverflowError / RecursionError / MemoryError."""
    path = tmp_path / "h.samidx"
    path.write_bytes(make(good))
    for load in (read_header, SamIndex.load):
        with pytest.raises(ValueError) as err:
            load(path)
        assert type(err.value) is ValueError
        msg = str(err.value)
        assert str(path) in msg and "samgpu index build" in msg and "\n" not in msg, msg


def test_header_controls_load(good, tmp_path):
    """Negative control of the table above: the same writer, unedited, gives a loadable file;
    and a version 1 file (no dtype keys) still loads."""
    for version, edit in ((2, None), (1, lambda m: [e.pop("dtype") for e in m["arrays"]])):
        path = tmp_path / f"v{version}.samidx"
        path.write_bytes(_craft.file_bytes(good, VOCAB, EOS, header_edit=edit, version=version))
        loaded = SamIndex.load(path)
        assert all(np.array_equal(getattr(loaded, n).numpy(), good[n]) for n in ARRAY_NAMES)


# --------------------------------------------------------------------------- fuzz
INT32 = (-(2**31), 2**31 - 1)


def _corpus(seed: int) -> tuple[int, int, list[list[int]], list[list[int]]]:
    """(vocab_size, eos_id, docs, queries) from a seed: cheaper to draw than nested lists, which
    keeps 2,000 fuzz cases within seconds (the mutations are what the fuzz explores)."""
    rng = np.random.default_rng(seed)
    vocab_size = int(rng.integers(2, 6))
    eos_id = int(rng.integers(0, vocab_size))
    docs = [rng.integers(0, vocab_size, int(rng.integers(1, 11))).tolist() for _ in range(3)]
    queries = [rng.integers(0, vocab_size, int(rng.integers(0, 9))).tolist() for _ in range(3)]
    return vocab_size, eos_id, docs, queries


MUTATIONS = st.tuples(
    st.sampled_from(ARRAY_NAMES),
    st.integers(0, 2**16),  # position, modulo the array's size
    st.sampled_from(["delta", "small", "extreme", "copy", "resize"]),
    st.integers(-3, 40),  # the value (small), the step (delta), the source position (copy)
)
_EXTREMES = (*INT32, 2**30, -(2**30))


def _mutate(a: dict[str, np.ndarray], name: str, pos: int, how: str, value: int) -> None:
    arr = a[name]
    if how == "resize":
        a[name] = arr[:-1] if value < 0 else np.append(arr, arr[-1:] if arr.size else [0])
        return
    if arr.size == 0:
        return
    i = pos % arr.size
    if how == "delta":
        arr[i] = np.clip(int(arr[i]) + (value % 5 - 2 or 1), *INT32)
    elif how == "copy":
        arr[i] = arr[value % arr.size]
    elif how == "extreme":
        arr[i] = _EXTREMES[value % len(_EXTREMES)]
    else:
        arr[i] = value


def _check_accepted(loaded: SamIndex, original: dict, queries: list[list[int]]) -> None:
    """What an accepted index must satisfy: the structural oracle, acyclic links, in-bounds
    answers for any query; and, if its arrays are the original's, the substring oracle exactly."""
    a = {n: getattr(loaded, n).numpy() for n in ARRAY_NAMES}
    assert structural_problems(a, loaded.vocab_size, loaded.eos_id) == []
    assert link_walks_end(a["link"].tolist(), max_steps=a["length"].size)
    same = all(np.array_equal(a[n], original[n]) for n in ARRAY_NAMES)
    text = a["tokens"].astype(np.int64)
    for q in queries:
        q = [t % loaded.vocab_size for t in q]
        state, n = loaded.match_state(q)
        assert 0 <= state < a["length"].size and 0 <= n <= len(q)
        match_len, end = loaded.longest_match(q)
        assert (match_len == 0 and end == -1) or 0 <= end < text.size
        if same:
            assert (match_len, end) == longest_suffix_match(text, q)


@cases(1500)
@given(seed=st.integers(0, 2**32 - 1), mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_fuzz_array_values(tmp_path, seed, mutations):
    """Array values (checksums recomputed): the load accepts exactly when the brute-force
    structural oracle finds nothing, the branch-free check agrees with the locating one at both
    levels, and whatever loads answers queries in bounds (exactly, if unchanged)."""
    vocab_size, eos_id, docs, queries = _corpus(seed)
    original = _craft.arrays_of(SamIndex.build(docs, vocab_size=vocab_size, eos_id=eos_id))
    a = {n: x.copy() for n, x in original.items()}
    for m in mutations:
        _mutate(a, *m)
    path = _craft.write(tmp_path / "f.samidx", a, vocab_size, eos_id)
    problems = structural_problems(a, vocab_size, eos_id)
    try:
        loaded = SamIndex.load(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        assert problems, f"refused a structurally valid index: {exc}"
        return
    assert not problems, f"accepted an invalid index: {problems}"
    fast, code, _ = codes(a, vocab_size)
    assert fast and code == V.OK
    deep_problems = structural_problems(a, vocab_size, eos_id, deep=True)
    assert (codes(a, vocab_size, deep=True)[1] == V.OK) == (not deep_problems)
    _check_accepted(loaded, original, queries)


@pytest.mark.parametrize("walk", ["host", "triton", "ref"])
def test_relinked_state_never_reports_a_match_longer_than_its_query(tmp_path, walk):
    """A suffix link moved to another, shorter state passes every structural check (found by the
    fuzz test above: seed 1890, the link of state 30 moved to 17). The walks clamp the match
    length when they climb a link, so no match is longer than the tokens consumed; without the
    clamp the host walk answered 7 for the 5-token query below (and the kernels likewise)."""
    from samgpu.automata import StaticAutomaton
    from samgpu.kernels.sam_match import sam_match_ref, sam_match_triton

    vocab_size, eos_id, docs, queries = _corpus(1890)
    original = _craft.arrays_of(SamIndex.build(docs, vocab_size=vocab_size, eos_id=eos_id))
    a = {n: x.copy() for n, x in original.items()}
    _mutate(a, "link", 1890, "small", 17)
    assert structural_problems(a, vocab_size, eos_id) == []
    loaded = SamIndex.load(_craft.write(tmp_path / "f.samidx", a, vocab_size, eos_id))
    query = [0, 1, 4, 0, 2]
    assert [t % vocab_size for t in queries[2]] == query
    if walk == "host":
        _, n = loaded.match_state(query)
    else:
        impl = sam_match_triton if walk == "triton" else sam_match_ref
        state, match_len = torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
        tokens = torch.tensor([query], dtype=torch.int32)
        impl(
            StaticAutomaton.from_index(loaded, "cpu"),
            tokens,
            torch.tensor([5], dtype=torch.int32),
            state,
            match_len,
        )
        n = int(match_len[0])
    assert n <= len(query)
    # control: the same walk over the unmutated index matches this query in full or in part
    _, n_good = SamIndex.build(docs, vocab_size=vocab_size, eos_id=eos_id).match_state(query)
    assert 0 < n_good <= len(query)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 63, 64, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4)
    | st.sampled_from(["int32", "uint16", "length", "float64"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
TOP_KEYS = ("vocab_size", "eos_id", "file_size", "tokenizer_fingerprint", "extra", "arrays")
ENTRY_KEYS = ("name", "offset", "count", "crc32", "dtype")


@st.composite
def header_edits(draw):
    if draw(st.booleans()):
        key, index = draw(st.sampled_from(TOP_KEYS)), None
    else:
        key, index = draw(st.sampled_from(ENTRY_KEYS)), draw(st.integers(0, len(ARRAY_NAMES) - 1))
    op = draw(st.sampled_from(["set", "set", "set", "delete", "delta"]))
    value = draw(JSON_VALUES) if op == "set" else draw(st.sampled_from([-64, -1, 1, 64]))
    return key, index, op, value


def _apply(meta: dict, key: str, index: int | None, op: str, value) -> None:
    if index is None:
        obj = meta
    else:  # an earlier edit may have replaced the list itself
        entries = meta.get("arrays")
        if not isinstance(entries, list) or index >= len(entries):
            return
        obj = entries[index]
        if not isinstance(obj, dict):
            return
    if op == "delete":
        obj.pop(key, None)
    elif op == "set":
        obj[key] = value
    elif isinstance(obj.get(key), int):
        obj[key] += value


@cases(600)
@given(
    edits=st.lists(header_edits(), min_size=1, max_size=3),
    depth=st.sampled_from([0, 50, 10**5]),
)
def test_fuzz_header_fields(good, tmp_path, edits, depth):
    """Header fields deleted, retyped, nudged or replaced by any JSON value, next to a value
    nested `depth` deep (10**5: beyond any recursion limit): a ValueError naming the file, or an
    index that passes the oracles."""

    def edit(meta):
        for e in edits:
            _apply(meta, *e)
        meta["deep"] = "DEEP"

    def nest(text: bytes) -> bytes:  # as JSON text: building it as Python objects would recurse
        return text.replace(b'"DEEP"', b"[" * depth + b"]" * depth if depth else b"0")

    path = tmp_path / "h.samidx"
    path.write_bytes(_craft.file_bytes(good, VOCAB, EOS, header_edit=edit, text_edit=nest))
    try:
        loaded = SamIndex.load(path)
    except ValueError as exc:
        assert type(exc) is ValueError and str(path) in str(exc)
        return
    assert depth < 10**5
    _check_accepted(loaded, good, [[1, 2, 3], [4, 4, 1], [5, 2, 3, 5]])
