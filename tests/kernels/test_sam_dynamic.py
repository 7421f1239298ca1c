"""sam_dynamic_extend: per-sequence suffix automata built and extended on the GPU, match first, then
extend. Every array (states, edges, hash table, text, match) of the Triton kernel equals the
reference's exactly; the matches equal a host SamIndex's longest earlier occurrence."""

import pytest
import torch

from samgpu.automata import DynamicAutomata
from samgpu.kernels.sam_dynamic import (
    FIELDS_EDGE,
    FIELDS_SLOT,
    FIELDS_STATE,
    sam_dynamic_extend,
    sam_dynamic_extend_ref,
    sam_dynamic_extend_triton,
)
from tests.kernels._sam_common import (
    host_longest_earlier_match,
    host_longest_match,
    i32,
    pad_rows,
    random_text,
    real_texts,
)

ALL_FIELDS = FIELDS_STATE + FIELDS_EDGE + FIELDS_SLOT + ("hash", "tokens")


def _pair(num_reqs, capacity, vocab, device):
    return [DynamicAutomata(num_reqs, capacity, vocab, device) for _ in range(2)]


def _assert_same(a: DynamicAutomata, r: DynamicAutomata):
    for f in ALL_FIELDS:
        assert torch.equal(getattr(a, f).cpu(), getattr(r, f).cpu()), f


def _step_both(pair, rows, device, width=None):
    new_tokens, num_new = pad_rows(rows, width)
    sam_dynamic_extend_triton(pair[0], new_tokens.to(device), num_new.to(device))
    sam_dynamic_extend_ref(pair[1], new_tokens.to(device), num_new.to(device))
    _assert_same(*pair)


def _check_host(auto: DynamicAutomata, texts: list[list[int]], vocab: int):
    for b, text in enumerate(texts):
        stored = text[: auto.capacity]
        assert auto.text_len[b].item() == len(stored)
        assert auto.tokens[b, : len(stored)].tolist() == stored
        state = auto.match_state[b].item()
        got = (auto.match_len[b].item(), auto.endpos[b, state].item() if state else -1)
        if len(text) <= auto.capacity:
            want = host_longest_earlier_match(text, vocab)
        else:  # frozen: matched against the stored text only
            want = host_longest_match(text, stored, vocab)
        assert got == want, (b, text)


@pytest.mark.parametrize("impl", [sam_dynamic_extend_triton, sam_dynamic_extend_ref])
def test_golden_prefill_then_extend(impl, device):
    """Prompt "1 2 3 1 2": the suffix "1 2" occurred before, first ending at position 1 -> match
    length 2; extending with "3" -> "1 2 3" (length 3, ending at 2). The states "1 2 3 1 2" needs:
    root + 5 prefixes, no clone (every repeat continues a unique earlier context)."""
    auto = DynamicAutomata(1, 16, 8, device)
    auto.reset()
    impl(auto, i32([[1, 2, 3, 1, 2]]).to(device), i32([5]).to(device))
    s = auto.match_state[0].item()
    assert (auto.match_len[0].item(), auto.endpos[0, s].item()) == (2, 1)
    assert auto.num_states.tolist() == [6] and auto.text_len.tolist() == [5]
    impl(auto, i32([[3, -1]]).to(device), i32([1]).to(device))
    s = auto.match_state[0].item()
    assert (auto.match_len[0].item(), auto.endpos[0, s].item()) == (3, 2)


@pytest.mark.parametrize("impl", [sam_dynamic_extend_triton, sam_dynamic_extend_ref])
def test_clone_and_match_normalisation(impl, device):
    """Text "a b b": the last "b" matches "b" (length 1, first ending at 1). Adding that second
    "b" splits the state {"a b", "b"}: a clone "b" is made and the match moves to it. Then "b": the
    match is "b b" (length 2, ending at 2); the extension clones "b b" off {"a b b", "b b"} and the
    match moves again, so that length[link[s]] < match_len <= length[s] holds."""
    a, b = 0, 1
    auto = DynamicAutomata(1, 8, 4, device)
    auto.reset()
    impl(auto, i32([[a, b, b]]).to(device), i32([3]).to(device))
    assert auto.match_len.tolist() == [1]
    s = auto.match_state[0].item()
    assert auto.endpos[0, s].item() == 1
    assert auto.num_states.tolist() == [5]  # root, 3 prefixes, the clone "b"
    assert auto.length[0, s].item() == 1  # the match sits in the clone, not in {"a b", "b"}
    impl(auto, i32([[b]]).to(device), i32([1]).to(device))
    s = auto.match_state[0].item()
    assert (auto.match_len[0].item(), auto.endpos[0, s].item()) == (2, 2)
    # normalised: length[link[s]] < match_len <= length[s]
    assert auto.length[0, auto.link[0, s]].item() < 2 <= auto.length[0, s].item()


@pytest.mark.parametrize("num_reqs", [1, 3, 8])
def test_random_prefill_and_steps_vs_reference_and_host(num_reqs, device):
    """Random prompts over alphabets of 2-4 (many clones), lengths 0..40, then 5 steps of 0..5
    tokens: all arrays equal between Triton and the reference after each launch; the matches equal
    the host index's longest earlier occurrence."""
    gen = torch.Generator().manual_seed(num_reqs)
    vocab = 5
    alphabets = [2 + b % 3 for b in range(num_reqs)]
    texts = [random_text(gen, int(torch.randint(0, 41, (1,), generator=gen)), k) for k in alphabets]
    texts[0] = texts[0][:1]  # a one-token prompt
    if num_reqs > 2:
        texts[2] = []  # an empty prompt
    pair = _pair(num_reqs, 64, vocab, device)
    for auto in pair:
        auto.reset()
    _step_both(pair, texts, device)
    _check_host(pair[0], texts, vocab)
    for _ in range(5):
        rows = [
            random_text(gen, int(torch.randint(0, 6, (1,), generator=gen)), k) for k in alphabets
        ]
        _step_both(pair, rows, device, width=6)
        texts = [t + r for t, r in zip(texts, rows, strict=True)]
        _check_host(pair[0], texts, vocab)


def test_steps_build_the_same_automaton_as_prefill(device):
    """Feeding a text in ragged steps gives the same arrays as one prefill of the whole text."""
    gen = torch.Generator().manual_seed(7)
    text = random_text(gen, 45, 3)
    whole = DynamicAutomata(1, 48, 4, device)
    whole.prefill(i32([text]).to(device), i32([45]).to(device))
    steps = DynamicAutomata(1, 48, 4, device)
    steps.prefill(i32([text[:10]]).to(device), i32([10]).to(device))
    lo = 10
    for k in (1, 7, 0, 12, 15):
        steps.extend(i32([text[lo : lo + k] + [-1] * (16 - k)]).to(device), i32([k]).to(device))
        lo += k
    _assert_same(whole, steps)


def test_full_capacity_worst_case_and_frozen_text(device):
    """Capacity C = 24 filled with "a b b ... b c" (the 3C-4 transitions worst case) and with
    "a b b ... b" (2C-1 states): bounds hold, Triton == reference; tokens past the capacity are
    matched but not stored (the automaton is frozen)."""
    cap = 24
    texts = [[0] + [1] * (cap - 2) + [2], [0] + [1] * (cap - 1)]
    pair = _pair(2, cap, 4, device)
    for auto in pair:
        auto.reset()
    _step_both(pair, texts, device)
    assert pair[0].num_edges[0].item() == 3 * cap - 4
    assert pair[0].num_states[1].item() == 2 * cap - 1
    _step_both(pair, [[1, 1], [1, 1]], device)
    assert pair[0].text_len.tolist() == [cap, cap]
    _check_host(pair[0], [texts[0] + [1, 1], texts[1] + [1, 1]], 4)


def test_real_text_long_prompt(device):
    """A 300-token tokenized GSM8K text (capacity 320) and a text that repeats a 40-token span of
    itself: prefill, then 20-token steps; Triton == reference; host matches agree."""
    t0, t1 = real_texts(2, 300)
    vocab = max(max(t0), max(t1)) + 2
    prompts = [t0[:200], t1[:60] + t1[10:50]]
    rests = [t0[200:], t1[50:60] + t1[:90]]
    pair = _pair(2, 320, vocab, device)
    for auto in pair:
        auto.reset()
    _step_both(pair, prompts, device)
    _check_host(pair[0], prompts, vocab)
    assert pair[0].match_len[1].item() >= 40  # the repeated span matches whole
    texts = prompts
    for lo in range(0, 100, 20):
        rows = [r[lo : lo + 20] for r in rests]
        _step_both(pair, rows, device, width=20)
        texts = [t + r for t, r in zip(texts, rows, strict=True)]
    _check_host(pair[0], texts, vocab)


def test_memory_per_token():
    """Documented footprint: 108..156 bytes per slot and token of capacity."""
    for cap in (64, 100, 1000, 8192):
        bpt = DynamicAutomata(2, cap, 10, "cpu").bytes_per_token
        assert 108 <= bpt <= 156 + 24 * 8 / cap, (cap, bpt)


def test_dispatch_uses_reference_on_cpu():
    auto = DynamicAutomata(1, 8, 4, "cpu")
    auto.reset()
    sam_dynamic_extend(auto, i32([[1, 2, 1, 2]]), i32([4]))
    assert auto.match_len.tolist() == [2]


def test_bad_inputs():
    auto = DynamicAutomata(2, 8, 4, "cpu")
    with pytest.raises(ValueError, match="only 2 dynamic automaton slots"):
        sam_dynamic_extend_triton(auto, i32([[1], [1], [1]]), i32([1, 1, 1]))
    with pytest.raises(ValueError, match="num_new"):
        sam_dynamic_extend_triton(auto, i32([[1], [1]]), i32([1]))
    with pytest.raises(ValueError, match="new_tokens"):
        sam_dynamic_extend_triton(auto, i32([1, 1]), i32([1, 1]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        auto.prefill(i32([[1, 4]]), i32([2]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        auto.prefill(i32([[1, -1, 2]]), i32([3]))
    auto.prefill(i32([[1, 2, -1]]), i32([2]))  # PAD past the length is fine
    with pytest.raises(ValueError, match="exceeds the dynamic automaton capacity 8"):
        auto.prefill(torch.zeros(1, 9, dtype=torch.int32), i32([9]))
    with pytest.raises(ValueError, match="only 2 slots"):
        auto.prefill(torch.zeros(3, 2, dtype=torch.int32), i32([2, 2, 2]))
    with pytest.raises(ValueError, match="prompts must be"):
        auto.prefill(torch.zeros(1, 2, dtype=torch.int64), i32([2]))
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        DynamicAutomata(1, 0, 4, "cpu")
    with pytest.raises(ValueError, match="exceeds 1048576 tokens"):
        DynamicAutomata(1, 2**20 + 1, 4, "cpu")
    with pytest.raises(ValueError, match="21-bit token ids"):
        DynamicAutomata(1, 8, 2**21 + 1, "cpu")


def test_debug_checks_catch_bad_counts(monkeypatch):
    """Under SAMGPU_DEBUG=1 (and only then: the checks sync) num_new > K or a PAD inside the
    counted tokens is an error."""
    auto = DynamicAutomata(1, 8, 4, "cpu")
    auto.reset()
    sam_dynamic_extend_ref(auto, i32([[1, -1]]), i32([2]))  # unchecked by default
    monkeypatch.setenv("SAMGPU_DEBUG", "1")
    with pytest.raises(ValueError, match="num_new must lie in"):
        sam_dynamic_extend_triton(auto, i32([[1, 2]]), i32([3]))
    with pytest.raises(ValueError, match="negative id"):
        sam_dynamic_extend_triton(auto, i32([[1, -1]]), i32([2]))
