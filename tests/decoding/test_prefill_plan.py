"""plan_calls: how an admission's prompts are cut into graph prefill calls (sorted by length, at
most max_rows per call, least padded tokens plus a fixed cost per call)."""

import random

from samgpu.decoding.prefill_plan import CALL_TOKENS, MIN_WIDTH, plan_calls


def _bucket(x, lo=1):
    return max(lo, 1 << (max(x, 1) - 1).bit_length())


def _cost(calls, lengths, max_rows, max_len):
    total = 0
    for c in calls:
        width = min(_bucket(max(lengths[i] for i in c), MIN_WIDTH), max_len)
        total += CALL_TOKENS + min(_bucket(len(c)), max_rows) * width
    return total


def test_long_prompt_gets_its_own_call():
    assert plan_calls([1900, 40, 200, 90], max_rows=16, max_len=4096) == [[1, 3, 2], [0]]


def test_similar_prompts_share_one_call():
    assert plan_calls([100, 120, 90, 110], max_rows=16, max_len=4096) == [[2, 0, 3, 1]]


def test_calls_hold_at_most_max_rows():
    calls = plan_calls([50] * 37, max_rows=16, max_len=4096)
    assert sorted(i for c in calls for i in c) == list(range(37))
    assert max(len(c) for c in calls) <= 16


def test_plan_beats_one_call_per_16_and_is_optimal_over_sorted_cuts():
    """Random admissions: every prompt once, never costlier than consecutive chunks of 16, and
    no better cut of the sorted order exists (brute force over small admissions)."""
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 7)
        lengths = [rng.choice([rng.randint(0, 300), rng.randint(300, 3000)]) for _ in range(n)]
        calls = plan_calls(lengths, max_rows=4, max_len=4096)
        assert sorted(i for c in calls for i in c) == list(range(n))
        order = sorted(range(n), key=lengths.__getitem__)
        chunks = [order[i : i + 4] for i in range(0, n, 4)]
        best = _cost(calls, lengths, 4, 4096)
        assert best <= _cost(chunks, lengths, 4, 4096)
        for mask in range(1 << (n - 1)):  # every cut of the sorted order into runs
            runs, start = [], 0
            for k in range(1, n):
                if mask >> (k - 1) & 1:
                    runs.append(order[start:k])
                    start = k
            runs.append(order[start:])
            if max(len(r) for r in runs) <= 4:
                assert best <= _cost(runs, lengths, 4, 4096)


def test_negative_control_one_call_costs_more():
    """The cost the plan minimises does tell calls apart: a single call for a long and three
    short prompts costs more than the plan's two."""
    lengths = [1900, 40, 200, 90]
    plan = plan_calls(lengths, 16, 4096)
    assert _cost([[0, 1, 2, 3]], lengths, 16, 4096) > _cost(plan, lengths, 16, 4096)
