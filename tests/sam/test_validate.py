"""Index files that lie (issue 13, part 1): checksums right, values wrong. Every check of
samgpu/sam/_validate.py refuses a file crafted to break it alone (its negative control), with one
ValueError naming the file; the hole each check closes is shown in a subprocess with validation
switched off (a hang, a segfault); malformed headers are one clean error, never a KeyError /
TypeError / OverflowError; and a hypothesis fuzz over array values and header fields finds only
clean refusals or indices that pass the brute-force oracles (tests/sam/_brute.py)."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samgpu.sam import ARRAY_NAMES, SamIndex, read_header
from samgpu.sam import _validate as V

from . import _craft
from ._brute import expected_text, link_walks_end, longest_suffix_match, structural_problems

ROOT = Path(__file__).resolve().parents[2]
DOCS = [[1, 2, 3, 1, 2, 4], [2, 3, 5, 2, 3], [4, 4, 1, 2]]
VOCAB, EOS = 6, 0


def cases(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
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
_PROBE = """
import sys
from samgpu.sam import SamIndex
check = SamIndex.find_problem
for arg in sys.argv[1:]:
    mode, path, query = arg.split(":")
    # "off" is the negative control: the load path without the validation
    SamIndex.find_problem = check if mode == "on" else (lambda self, deep=True: None)
    try:
        index = SamIndex.load(path)
    except ValueError as exc:
        print("refused", exc, flush=True)
        continue
    print("loaded", flush=True)
    print(index.longest_match([int(t) for t in query.split(",")]), flush=True)
"""


class _Probe:
    """_PROBE in a subprocess over (mode, path, query) triples; started at once, so two probes
    overlap (each spends seconds importing torch)."""

    def __init__(self, *runs: tuple[str, Path, list[int]]):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        args = [f"{mode}:{path}:{','.join(map(str, q))}" for mode, path, q in runs]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )

    def result(self, hang_after_s: float) -> tuple[object, str]:
        """(exit status or "hang", stdout). The clock starts at the first "loaded": importing
        and loading take seconds on a busy machine, the matcher's walk microseconds."""
        lines = []
        try:
            for line in self.proc.stdout:
                lines.append(line)
                if line.startswith("loaded"):
                    break
            out, _ = self.proc.communicate(timeout=hang_after_s)
            return self.proc.returncode, "".join(lines) + out
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return "hang", "".join(lines)


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
    With the validation both loads are one clean refusal (run in a subprocess all the same)."""
    cycle = _cycle_file(index, good, tmp_path)  # (path, query)
    a = {n: x.copy() for n, x in good.items()}
    a["edge_dst"][VOCAB:] = 2**31 - 1  # every non-root edge
    oob = (_craft.write(tmp_path / "oob.samidx", a, VOCAB, EOS), [1, 2, 3])
    with_validation = _Probe(("on", *cycle), ("on", *oob), ("off", *cycle))
    without = _Probe(("off", *oob))
    status, out = with_validation.result(hang_after_s=2)
    refusals = [line for line in out.splitlines() if line.startswith("refused")]
    assert len(refusals) == 2, (status, out)
    assert "a cycle fails here" in refusals[0] and "edge_dst" in refusals[1], out
    assert status == "hang", (status, out)  # then the cycle, unvalidated: longest_match loops
    status, out = without.result(hang_after_s=30)
    assert isinstance(status, int) and status < 0, (status, out)  # killed by a signal (SIGSEGV)
