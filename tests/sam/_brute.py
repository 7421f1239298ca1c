"""Brute-force substring oracles for the automaton tests (obviously correct, slow, numpy/lists)."""

from __future__ import annotations

import numpy as np


def expected_text(docs: list[list[int]], vocab_size: int, eos_id: int) -> list[int]:
    """The index text, from the spec: non-empty documents each followed by EOS unless they end in
    EOS; then each id v as [v, EOS] ([EOS] alone for v = EOS)."""
    text: list[int] = []
    for doc in docs:
        if doc:
            text += list(doc)
            if doc[-1] != eos_id:
                text.append(eos_id)
    for v in range(vocab_size):
        text += [v] if v == eos_id else [v, eos_id]
    return text


def end_positions(text: np.ndarray, pattern) -> np.ndarray:
    """End positions (index of the last token) of every occurrence of `pattern` in `text`."""
    pattern = np.asarray(pattern, dtype=np.int64)
    n = pattern.size
    if n == 0 or n > text.size:
        return np.empty(0, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(text, n)
    return np.flatnonzero((windows == pattern).all(axis=1)) + n - 1


def longest_suffix_match(text: np.ndarray, query) -> tuple[int, int]:
    """(length of the longest suffix of query occurring in text, earliest end position), (0, -1)."""
    query = list(query)
    for length in range(len(query), 0, -1):
        ends = end_positions(text, query[len(query) - length :])
        if ends.size:
            return length, int(ends[0])
    return 0, -1


def followers(text: np.ndarray, pattern) -> set[int]:
    """Tokens that follow some occurrence of `pattern` in text."""
    ends = end_positions(text, pattern)
    ends = ends[ends + 1 < text.size]
    return set(text[ends + 1].tolist())


def structural_problems(
    a: dict[str, np.ndarray], vocab_size: int, eos_id: int, *, deep: bool = False
) -> list[str]:
    """Every violated structural invariant of index arrays `a` (samgpu/sam/_validate.py's spec,
    written as plain loops over lists; empty list = valid). deep adds the two consistency checks.
    Independent of the compiled check: no early exit, no scratch arrays, no phase order."""
    length, link, endpos, count = (a[n].tolist() for n in ("length", "link", "endpos", "count"))
    offsets, tok, dst = (a[n].tolist() for n in ("edge_offsets", "edge_token", "edge_dst"))
    root_next, tokens = a["root_next"].tolist(), a["tokens"].tolist()
    num_states, num_edges, num_tokens = len(length), len(tok), len(tokens)
    if not 1 <= vocab_size < 2**31 or not 0 <= eos_id < vocab_size:
        return ["vocab_size / eos_id"]
    shapes = [
        num_states >= 1,
        len(link) == len(endpos) == len(count) == num_states,
        len(offsets) == num_states + 1,
        len(dst) == num_edges,
        len(root_next) == vocab_size,
    ]
    if not all(shapes):
        return ["shapes"]
    bad = []
    if (length[0], link[0], endpos[0]) != (0, -1, -1) or count[0] < 1:
        bad.append("root")
    bad += [f"tokens[{i}]" for i, v in enumerate(tokens) if not 0 <= v < vocab_size]
    if offsets[0] != 0 or offsets[-1] != num_edges:
        return [*bad, "offsets ends"]  # edge slices are meaningless beyond this point
    if any(offsets[s + 1] < offsets[s] for s in range(num_states)):
        return [*bad, "offsets order"]
    for s in range(1, num_states):
        if not 0 <= link[s] < num_states:
            bad.append(f"link[{s}] range")
        elif length[link[s]] >= length[s]:
            bad.append(f"link[{s}] length")
        if not 0 <= endpos[s] < num_tokens:
            bad.append(f"endpos[{s}] range")
        if length[s] > endpos[s] + 1:
            bad.append(f"length[{s}] > endpos + 1")
        if count[s] < 1:
            bad.append(f"count[{s}] < 1")
    for s in range(num_states):
        edges = range(offsets[s], offsets[s + 1])
        labels = [tok[k] for k in edges]
        bad += [f"edge_token[{k}] range" for k in edges if not 0 <= tok[k] < vocab_size]
        if any(x >= y for x, y in zip(labels, labels[1:], strict=False)):
            bad.append(f"state {s} edge order")
        bad += [f"edge_dst[{k}] range" for k in edges if not 1 <= dst[k] < num_states]
    if offsets[1] != vocab_size:
        bad.append("root degree")
    elif root_next != dst[:vocab_size]:
        bad.append("root_next")
    if deep and not bad:
        for s in range(num_states):
            for k in range(offsets[s], offsets[s + 1]):
                if length[dst[k]] <= length[s]:
                    bad.append(f"edge {k} not longer")
        children = [0] * num_states
        for s in range(1, num_states):
            children[link[s]] += count[s]
        for s in range(num_states):
            own = int(s > 0 and length[s] == endpos[s] + 1)
            if count[s] != children[s] + own:
                bad.append(f"count[{s}] sum")
    return bad


def link_walks_end(link: list[int], max_steps: int) -> bool:
    """Every suffix-link walk reaches NO_STATE (-1) within max_steps: no cycle."""
    for s in range(len(link)):
        state, steps = s, 0
        while state != -1:
            if not 0 <= state < len(link) or steps > max_steps:
                return False
            state, steps = link[state], steps + 1
    return True
