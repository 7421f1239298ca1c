"""Structural validation of a SamIndex, compiled (numba); `load` runs the fast level on every file.

The checksums of the file format prove that a file was not damaged, not that its values make
sense, and the numba matcher and the GPU kernels do no bounds checks. Fast level (what memory
safety and termination need; `sam_is_valid`, branch-free, and `sam_validate(deep=False)`, which
names the first violation):
- root: state 0 has length 0, link NO_STATE, endpos NO_POSITION and count >= 1;
- links: every other state's link lies in [0, S) and is strictly shorter (`length[link[s]] <
  length[s]`), so following links strictly decreases `length` and always ends at the root (no
  cycle, no hang);
- endpos in [0, T) with `length <= endpos + 1`; count >= 1 for every non-root state (tree
  drafts use -1 for an empty slot);
- CSR: `edge_offsets` has a leading 0, is non-decreasing and ends at E; within a state
  `edge_token` is strictly increasing and in [0, vocab_size) (binary search is exact); `edge_dst`
  lies in [1, S);
- root row: the root has exactly one edge per vocabulary id (its edges are then tokens 0..V-1 in
  order) and `root_next[v] == edge_dst[v]`;
- tokens: every text token lies in [0, vocab_size).
Deep level (`deep=True`; `samgpu index stats`, tests): also every edge leads to a longer state
(so a match length never exceeds its state's length) and every count is its own occurrence (1
when `length == endpos + 1`, the state of a whole prefix) plus the counts of the states linking
to it, as the builder computes them (so counts never grow along a link).
Neither proves that the automaton is the suffix automaton of `tokens` (that takes a rebuild, ~1 s
per million tokens): a well-formed but wrong automaton makes poor drafts, which verification
rejects, but every read stays in bounds and every walk ends.

Cost (profiling/bench_index_build.py --validate --index FILE; 2-core AMD EPYC dev VM, one core):
the fast level is sequential passes over every array plus one random read of `length` per state,
with an E-byte scratch. Default index (2.3 M text tokens, 100 MB file): 17 ms, against a load of
41 ms page-cache hot / 89 ms cold (validation included). Synthetic 10 M tokens (375 MB): 62 ms,
against 173 ms hot / 326 ms cold. So about a quarter of a cold read, half of a hot one (which is
mostly the checksums). The deep level adds a random read per edge and an S-entry int32 scratch
for the count sums: 85 ms and 434 ms.

Example: link = [-1, 0, 3, 2] (states 2 and 3 link to each other) -> LINK_LENGTH at state 2, since
one of `length[3] < length[2]`, `length[2] < length[3]` must fail: "link[2] = 3 is not shorter:
length[3] = 2 >= length[2] = 2 (suffix links must strictly shorten; a cycle fails here)".
"""

from __future__ import annotations

import numba
import numpy as np

NO_STATE: int = -1
NO_POSITION: int = -1
_INT32_MAX: int = 2**31 - 1

# Codes returned by sam_validate (OK = valid), in the order the checks run, each with the index
# it reports.
OK = 0
ROOT = 1  # state 0 is not a root (length, link, endpos, count)         (where: 0)
TOKENS = 2  # tokens[i] outside the vocabulary                           (where: i)
OFFSETS_START = 3  # edge_offsets[0] != 0                                 (where: 0)
OFFSETS_END = 4  # edge_offsets[S] != E                                   (where: S)
OFFSETS_ORDER = 5  # edge_offsets[s + 1] < edge_offsets[s]                (where: s + 1)
LINK_RANGE = 6  # link[s] outside [0, S)                                  (where: s)
LINK_LENGTH = 7  # length[link[s]] >= length[s]                           (where: s)
ENDPOS_RANGE = 8  # endpos[s] outside [0, T)                              (where: s)
ENDPOS_LENGTH = 9  # length[s] > endpos[s] + 1                            (where: s)
COUNT_MIN = 10  # count[s] < 1                                            (where: s)
COUNT_SUM = 11  # count[s] != own occurrence + counts of its link children (where: s)
EDGE_TOKEN = 12  # edge_token[k] outside [0, V)                           (where: k)
EDGE_ORDER = 13  # edge_token[k] <= edge_token[k - 1] within a state      (where: k)
EDGE_DST = 14  # edge_dst[k] outside [1, S)                               (where: k)
EDGE_LENGTH = 15  # length[edge_dst[k]] <= length[source state]          (where: k)
ROOT_DEGREE = 16  # the root lacks an edge for some id                    (where: its degree)
ROOT_NEXT = 17  # root_next[v] != edge_dst[v]                             (where: v)


@numba.njit(cache=True, nogil=True)
def sam_is_valid(
    length,  # [S] int32
    link,  # [S] int32
    endpos,  # [S] int32
    count,  # [S] int32
    edge_offsets,  # [S+1] int32
    edge_token,  # [E] int32
    edge_dst,  # [E] int32
    root_next,  # [V] int32
    tokens,  # [T] int32
    vocab_size,  # int, V
):
    """True iff `sam_validate(..., deep=False)` finds nothing: the same checks, branch-free
    within each phase (so the sequential ones vectorise), with no position reported; a phase
    that reads at an index runs only after the phase that bounds it. The load path calls this
    and `sam_validate` only to name the first violation."""
    num_states = length.shape[0]
    num_edges = edge_token.shape[0]
    num_tokens = tokens.shape[0]
    if length[0] != 0 or link[0] != NO_STATE or endpos[0] != NO_POSITION or count[0] < 1:
        return False
    if edge_offsets[0] != 0 or edge_offsets[num_states] != num_edges:
        return False
    bad = False
    for i in range(num_tokens):
        v = tokens[i]
        bad |= (v < 0) | (v >= vocab_size)
    for s in range(num_states):
        bad |= edge_offsets[s + 1] < edge_offsets[s]
    for s in range(1, num_states):
        lk = link[s]
        e = endpos[s]
        bad |= (lk < 0) | (lk >= num_states) | (e < 0) | (e >= num_tokens)
        bad |= (length[s] > e + 1) | (count[s] < 1)
    for k in range(num_edges):
        t = edge_token[k]
        d = edge_dst[k]
        bad |= (t < 0) | (t >= vocab_size) | (d < 1) | (d >= num_states)
    if bad:
        return False
    # offsets are sorted and in [0, E], links in [0, S): now the indexed reads are in bounds
    is_start = np.zeros(num_edges + 1, dtype=np.bool_)
    for s in range(num_states):
        is_start[edge_offsets[s]] = True
    for k in range(1, num_edges):
        bad |= (edge_token[k] <= edge_token[k - 1]) & ~is_start[k]
    for s in range(1, num_states):
        bad |= length[link[s]] >= length[s]
    if bad or edge_offsets[1] != vocab_size:
        return False
    for v in range(vocab_size):
        bad |= root_next[v] != edge_dst[v]
    return not bad


@numba.njit(cache=True, nogil=True)
def sam_validate(
    length,  # [S] int32
    link,  # [S] int32
    endpos,  # [S] int32
    count,  # [S] int32
    edge_offsets,  # [S+1] int32
    edge_token,  # [E] int32
    edge_dst,  # [E] int32
    root_next,  # [V] int32
    tokens,  # [T] int32
    vocab_size,  # int, V
    deep,  # bool: also the consistency checks (EDGE_LENGTH, COUNT_SUM)
):
    """(code, where): (OK, 0) if every invariant holds, else the first violated one. Shapes must
    agree already (S >= 1, len(edge_offsets) = S + 1, len(root_next) = V); SamIndex.validate
    checks them first. Phases run in the order of the codes; only the link check and the deep
    checks read at random (one `length` per state, one `length` per edge)."""
    num_states = length.shape[0]
    num_edges = edge_token.shape[0]
    num_tokens = tokens.shape[0]
    if length[0] != 0 or link[0] != NO_STATE or endpos[0] != NO_POSITION or count[0] < 1:
        return ROOT, 0
    for i in range(num_tokens):
        if tokens[i] < 0 or tokens[i] >= vocab_size:
            return TOKENS, i
    if edge_offsets[0] != 0:
        return OFFSETS_START, 0
    if edge_offsets[num_states] != num_edges:
        return OFFSETS_END, num_states
    for s in range(num_states):
        if edge_offsets[s + 1] < edge_offsets[s]:
            return OFFSETS_ORDER, s + 1
    # offsets sorted from 0 to E, so every offset indexes is_start[E + 1]
    is_start = np.zeros(num_edges + 1, dtype=np.bool_)  # edge k starts some state's edges
    for s in range(num_states):
        is_start[edge_offsets[s]] = True
    for s in range(1, num_states):
        lk = link[s]
        if lk < 0 or lk >= num_states:
            return LINK_RANGE, s
        if length[lk] >= length[s]:
            return LINK_LENGTH, s
        e = endpos[s]
        if e < 0 or e >= num_tokens:
            return ENDPOS_RANGE, s
        if length[s] > e + 1:
            return ENDPOS_LENGTH, s
        if count[s] < 1:
            return COUNT_MIN, s
    if deep:
        code, where = _count_sums(length, link, endpos, count)
        if code != OK:
            return code, where
    for k in range(num_edges):
        t = edge_token[k]
        if t < 0 or t >= vocab_size:
            return EDGE_TOKEN, k
        if k > 0 and t <= edge_token[k - 1] and not is_start[k]:
            return EDGE_ORDER, k
        d = edge_dst[k]
        if d < 1 or d >= num_states:
            return EDGE_DST, k
    if deep:
        for s in range(num_states):
            src_len = length[s]
            for k in range(edge_offsets[s], edge_offsets[s + 1]):
                if length[edge_dst[k]] <= src_len:
                    return EDGE_LENGTH, k
    # Root edges are strictly increasing ids in [0, V): V of them means exactly 0..V-1 in order.
    if edge_offsets[1] != vocab_size:
        return ROOT_DEGREE, edge_offsets[1]
    for v in range(vocab_size):
        if root_next[v] != edge_dst[v]:
            return ROOT_NEXT, v
    return OK, 0


@numba.njit(cache=True, nogil=True)
def _count_sums(length, link, endpos, count):
    """COUNT_SUM check: count[s] == own occurrence + sum of count over the states linking to s
    (links already checked in range)."""
    num_states = length.shape[0]
    children = np.zeros(num_states, dtype=np.int32)  # overflow-checked int32 sums
    for s in range(1, num_states):
        lk = link[s]
        c = count[s]
        if children[lk] > _INT32_MAX - c:
            return COUNT_SUM, lk
        children[lk] += c
    if count[0] != children[0]:
        return COUNT_SUM, 0
    for s in range(1, num_states):
        own = 1 if length[s] == endpos[s] + 1 else 0
        if count[s] != children[s] + own:
            return COUNT_SUM, s
    return OK, 0


def describe(code: int, where: int, a: dict[str, np.ndarray], vocab_size: int) -> str:
    """One-line message for a sam_validate result; `a` maps array names to numpy arrays."""
    length, link, endpos, count = a["length"], a["link"], a["endpos"], a["count"]
    offsets, tok, dst = a["edge_offsets"], a["edge_token"], a["edge_dst"]
    num_states, num_edges, num_tokens = length.size, tok.size, a["tokens"].size
    i = where
    if code == ROOT:
        return (
            f"state 0 is not a root (length {length[0]}, link {link[0]}, endpos {endpos[0]}, "
            f"count {count[0]}; expected 0, {NO_STATE}, {NO_POSITION}, >= 1)"
        )
    if code == TOKENS:
        return f"tokens[{i}] = {a['tokens'][i]} is outside the vocabulary [0, {vocab_size})"
    if code == OFFSETS_START:
        return f"edge_offsets[0] = {offsets[0]}, expected 0"
    if code == OFFSETS_END:
        return f"edge_offsets[{i}] = {offsets[i]}, expected num_edges = {num_edges}"
    if code == OFFSETS_ORDER:
        return f"edge_offsets decreases at {i}: {offsets[i - 1]} then {offsets[i]}"
    if code == LINK_RANGE:
        return f"link[{i}] = {link[i]} is outside [0, num_states={num_states})"
    if code == LINK_LENGTH:
        lk = link[i]
        return (
            f"link[{i}] = {lk} is not shorter: length[{lk}] = {length[lk]} >= length[{i}] = "
            f"{length[i]} (suffix links must strictly shorten; a cycle fails here)"
        )
    if code == ENDPOS_RANGE:
        return f"endpos[{i}] = {endpos[i]} is outside [0, num_tokens={num_tokens})"
    if code == ENDPOS_LENGTH:
        return f"length[{i}] = {length[i]} exceeds endpos[{i}] + 1 = {int(endpos[i]) + 1}"
    if code == COUNT_MIN:
        return f"count[{i}] = {count[i]} must be >= 1"
    if code == COUNT_SUM:
        return (
            f"count[{i}] = {count[i]} is not its own occurrence plus the counts of the states "
            "linking to it"
        )
    if code == EDGE_TOKEN:
        return f"edge_token[{i}] = {tok[i]} is outside the vocabulary [0, {vocab_size})"
    if code == EDGE_ORDER:
        return f"edge_token is not strictly increasing within a state at edge {i}"
    if code == EDGE_DST:
        return f"edge_dst[{i}] = {dst[i]} is outside [1, num_states={num_states})"
    if code == EDGE_LENGTH:
        src = int(np.searchsorted(offsets, i, side="right")) - 1
        d = dst[i]
        return (
            f"edge {i} of state {src} leads to state {d} of length {length[d]}, not longer than "
            f"{length[src]}"
        )
    if code == ROOT_DEGREE:
        return f"the root has {i} edges, expected one per vocabulary id ({vocab_size})"
    if code == ROOT_NEXT:
        return f"root_next[{i}] = {a['root_next'][i]} disagrees with the root's edge {dst[i]}"
    return f"unknown validation code {code}"  # internal: every code is described above
