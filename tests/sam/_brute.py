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
