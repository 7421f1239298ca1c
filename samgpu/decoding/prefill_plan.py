"""Host planning of prefill calls (samgpu.decoding.prefill runs them): width buckets of packed
calls, the cut of an admission's prompts into packed calls (`plan_packs`) or into padded graph
calls (`plan_calls`), and the (rows, width) buckets those replay. Pure functions of lengths."""

from __future__ import annotations

GRAPH_ROWS = 16  # prompts per graph call at most (the scratch cache's rows)
MIN_WIDTH = 64  # smallest width bucket
MAX_TOKENS = 1 << 16  # prompt tokens (rows x width) per prefill call at most
MAX_CALL_TOKENS = 2 * MAX_TOKENS  # padded tokens (rows x width buckets) of a graph call at most
CALL_TOKENS = 2048  # a call's fixed cost in padded tokens (H200, SmolLM2: ~1.8 ms ~ 1.5k tokens)


def bucket(x: int, lo: int = 1) -> int:
    return max(lo, 1 << (max(x, 1) - 1).bit_length())


def pack_capacity(max_rows: int, max_len: int) -> int:
    """Tokens of one packed call at most: the padded path's scratch (max_rows x max_len, at most
    MAX_CALL_TOKENS), and always one whole prompt."""
    return max(max_len, min(max_rows * max_len, MAX_CALL_TOKENS))


def pack_bucket(tokens: int, capacity: int) -> int:
    """The width bucket of a packed call: the least of 2^k and 3 * 2^(k-2) (>= MIN_WIDTH) holding
    `tokens`, at most `capacity`. Example: 1,400 -> 1,536; 1,672 -> 2,048."""
    width = bucket(tokens, MIN_WIDTH)
    if width * 3 // 4 >= max(tokens, MIN_WIDTH):
        width = width * 3 // 4
    return min(width, capacity)


def pack_buckets(capacity: int) -> list[int]:
    """Every width pack_bucket gives up to capacity (the packed graphs of warm-up)."""
    powers = powers_up_to(MIN_WIDTH, capacity)
    return sorted({pack_bucket(n, capacity) for p in powers for n in (p * 3 // 4, p)})


def plan_packs(lengths: list[int], capacity: int) -> list[list[int]]:
    """Prompt indices cut into packed calls: in order, a new call when the next prompt would take
    the call past `capacity` tokens; empty prompts are in no call.
    Example: lengths [300, 0, 500, 400], capacity 1,024 -> [[0, 2], [3]]."""
    calls: list[list[int]] = []
    used = capacity
    for i, n in enumerate(lengths):
        if n == 0:
            continue
        if used + n > capacity:
            calls.append([])
            used = 0
        calls[-1].append(i)
        used += n
    return calls


def call_bucket(rows: int, width: int, max_rows: int, max_len: int) -> tuple[int, int]:
    """The (rows, width) graph bucket of a call: powers of two, at most max_rows x max_len, at
    least MIN_WIDTH columns."""
    return min(bucket(rows), max_rows), min(bucket(width, MIN_WIDTH), max_len)


def powers_up_to(lo: int, hi: int) -> list[int]:
    """lo, 2 lo, 4 lo, ... while below hi, then hi: every bucket call_bucket gives up to hi."""
    out = [lo]
    while out[-1] < hi:
        out.append(min(2 * out[-1], hi))
    return out


def plan_calls(lengths: list[int], max_rows: int, max_len: int) -> list[list[int]]:
    """Prompt indices cut into prefill calls: sorted by length, runs of at most max_rows,
    minimising the sum over calls of CALL_TOKENS + rows bucket x width bucket (dynamic
    programming over the cut points; the host cost is negligible next to a call).
    Example: lengths [1900, 40, 200, 90], 16 rows -> [[1, 3, 2], [0]]."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    n = len(order)
    best = [0] + [None] * n  # best[j]: cost of the first j sorted prompts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_rows), j):
            rows, width = call_bucket(j - i, lengths[order[j - 1]], max_rows, max_len)
            if rows * width > MAX_CALL_TOKENS and j - i > 1:
                continue
            cost = best[i] + CALL_TOKENS + rows * width
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    calls, j = [], n
    while j > 0:
        calls.append(order[cut[j] : j])
        j = cut[j]
    return calls[::-1]
