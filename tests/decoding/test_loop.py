"""The engine and scheduler (built by samgpu.factory.build_decoder) against a toy runner whose
logits depend on the whole committed context through its KV cache, so any error in tree masks,
positions, verification, KV compaction or commit changes the output. Greedy output must equal the
toy's own autoregressive greedy decoding token for token, for every drafter setting (errors,
branches), ragged batches, successive batches and continuous batching."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from samgpu.decoding.config import GenerationConfig, ProgressInfo
from samgpu.factory import build_decoder


@dataclass
class ToyCache:
    k: torch.Tensor  # [L, R, 1, max_len, 1]
    v: torch.Tensor
    cache_len: torch.Tensor  # [R] int32


class ToyRunner:
    """Runner contract (docs/ARCHITECTURE.md) for a 'model' over a small vocabulary:
        logits(seq) = W[seq[-1]] + U[seq[-2] or V if none] + S[sum(seq[:-1]) % 5].
    Its K cache holds token ids (layer 1 is what the context sum reads), its V cache twice the
    ids (layer 0 gives the previous token), so both caches and both layers must be right."""

    graph_safe = False
    num_layers = 2
    dtype = logits_dtype = torch.float32

    def __init__(self, vocab_size: int = 12, seed: int = 0, scale: float = 3.0):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.device = torch.device("cpu")
        self.W = scale * torch.randn(vocab_size, vocab_size, generator=g)
        self.U = scale * torch.randn(vocab_size + 1, vocab_size, generator=g)
        self.S = scale * torch.randn(5, vocab_size, generator=g)

    def next_logits(self, seq: list[int]) -> torch.Tensor:
        prev = seq[-2] if len(seq) >= 2 else self.vocab_size
        return self.W[seq[-1]] + self.U[prev] + self.S[sum(seq[:-1]) % 5]

    def allocate_cache(self, max_reqs: int, max_len: int) -> ToyCache:
        shape = (self.num_layers, max_reqs, 1, max_len, 1)
        return ToyCache(
            torch.zeros(shape), torch.zeros(shape), torch.zeros(max_reqs, dtype=torch.int32)
        )

    def _write(self, cache, tokens, pos):
        B = tokens.shape[0]
        rows = torch.arange(B)[:, None].expand_as(pos)
        cache.k.permute(1, 3, 0, 2, 4)[rows, pos] = tokens.float()[..., None, None, None]
        cache.v.permute(1, 3, 0, 2, 4)[rows, pos] = 2 * tokens.float()[..., None, None, None]

    def prefill(self, input_ids, lengths, cache):
        B, T = input_ids.shape
        self._write(cache, input_ids, torch.arange(T)[None, :].expand(B, T))
        cache.cache_len[:B] = lengths

    def forward_tree(self, tokens, positions, tree_mask, cache, out, *, live=None):
        B, N = tokens.shape
        V = self.vocab_size
        cl = cache.cache_len[:B].long()
        self._write(cache, tokens, cl[:, None] + torch.arange(N))
        in_cache = torch.arange(cache.k.shape[3])[None, :] < cl[:, None]
        cache_sum = (cache.k[1, :B, 0, :, 0] * in_cache).sum(1)
        last = cache.v[0, :B, 0, :, 0].gather(1, (cl - 1).clamp(min=0)[:, None])[:, 0] / 2
        last = torch.where(cl > 0, last, float(V)).long()
        anc = tree_mask.float() * (1 - torch.eye(N))
        ctx_sum = cache_sum[:, None] + (anc @ tokens.float()[..., None])[..., 0]
        parent = (anc * (torch.arange(N) + 1)).amax(-1).long() - 1
        prev = torch.where(parent >= 0, tokens.long().gather(1, parent.clamp(min=0)), last[:, None])
        toks = tokens.long().clamp(0, V - 1)
        out.copy_(self.W[toks] + self.U[prev] + self.S[ctx_sum.long() % 5])
        # positions must be cache_len + depth
        depth = tree_mask.sum(-1) - 1
        assert torch.equal(positions.long(), cl[:, None] + depth)
        return out


def reference_greedy(runner: ToyRunner, prompt, max_new_tokens, eos=()):
    seq, out = list(prompt), []
    for _ in range(max_new_tokens):
        tok = int(torch.argmax(runner.next_logits(seq)))
        seq.append(tok)
        out.append(tok)
        if tok in eos:
            break
    return out


PROMPTS = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9, 7], [0, 0]]


def _test_decoder(runner, prompts, max_reqs, *, depth=3, extra=6, max_len=64, **kw):
    """A decoder whose `test` drafter knows the toy's greedy continuations of `prompts`."""
    refs = [(p, reference_greedy(runner, p, 40 + extra)) for p in prompts]
    options = dict(references=refs, depth=depth, **kw)
    return build_decoder(runner, "test", batch_size=max_reqs, max_len=max_len, options=options)


def _decoder_of_kind(runner, kind, max_reqs):
    """`ar`, or the test drafter ("test": chains, "test-branching": trees) with 30% draft errors,
    for the MANY prompts."""
    if kind == "ar":
        return build_decoder(runner, "ar", batch_size=max_reqs, max_len=64)
    branching = kind == "test-branching"
    return _test_decoder(runner, MANY, max_reqs, error_rate=0.3, branching=branching)


def test_ar_equals_reference_greedy_across_batches():
    """Drafter `ar` (root only), 4 ragged prompts (lengths 5, 1, 8, 2) with max_reqs 3: two
    successive batches; each output equals the toy's greedy continuation."""
    runner = ToyRunner()
    dec = build_decoder(runner, "ar", batch_size=3, max_len=64)
    out = dec.generate(PROMPTS, GenerationConfig(max_new_tokens=12))
    assert out.tokens == [reference_greedy(runner, p, 12) for p in PROMPTS]
    for s in out.stats:
        assert s.steps == 12 and s.generated == 12 and s.mat == 1.0 and s.accepted_hist == [12]


@pytest.mark.parametrize(
    "error_rate,branching",
    [(0.0, False), (0.3, False), (1.0, False), (0.3, True), (0.0, True)],
    ids=["exact", "errors", "all-wrong", "errors-branching", "exact-branching"],
)
def test_test_drafter_equals_reference_greedy(error_rate, branching):
    """Whatever the draft quality or tree shape, greedy output = AR greedy output, and each
    request's accepted-length histogram accounts for its steps and tokens."""
    runner = ToyRunner(seed=1)
    dec = _test_decoder(
        runner, PROMPTS, 4, depth=3, error_rate=error_rate, branching=branching, seed=5
    )
    out = dec.generate(PROMPTS, GenerationConfig(max_new_tokens=20, speculation="always"))
    assert out.tokens == [reference_greedy(runner, p, 20) for p in PROMPTS]
    for s in out.stats:
        assert sum(s.accepted_hist) == s.steps
        assert s.mat == pytest.approx(s.generated / s.steps)
        emitted_uncut = sum((a + 1) * n for a, n in enumerate(s.accepted_hist))
        assert s.generated <= emitted_uncut < s.generated + 4  # only the last step is cut
        if error_rate == 1.0:
            assert s.accepted_hist[0] == s.steps == 20  # every draft rejected: one token per step
        if error_rate == 0.0:
            assert s.steps == 5 and s.mat == 4.0  # 20 tokens, 4 per step (3 drafts + bonus)


def test_accepted_length_accounting_with_known_errors():
    """Depth-3 chains over a reference continuation with wrong tokens at positions 2 and 5:
    step 1 at generated 0 drafts ref[0:3] (ref[2] wrong) -> accepts 2, emits 3;
    step 2 at 3 drafts ref[3:6] (ref[5] wrong) -> accepts 2, emits 3;
    step 3 at 6 drafts ref[6:9] -> accepts 3, emits 4 -> 10 tokens = max_new_tokens.
    So steps 3, histogram [0, 0, 2, 1], MAT 10/3."""
    runner = ToyRunner(seed=2)
    prompt = [4, 4, 7]
    ref = reference_greedy(runner, prompt, 16)
    corrupted = list(ref)
    for i in (2, 5):
        corrupted[i] = (ref[i] + 1) % runner.vocab_size
    options = dict(references=[(prompt, corrupted)], depth=3)
    dec = build_decoder(runner, "test", batch_size=1, max_len=32, options=options)
    out = dec.generate([prompt], GenerationConfig(max_new_tokens=10, speculation="always"))
    assert out.tokens == [ref[:10]]
    s = out.stats[0]
    assert (s.steps, s.generated, s.accepted_hist) == (3, 10, [0, 0, 2, 1])
    assert s.mat == pytest.approx(10 / 3)


def test_eos_cut_and_masking_of_finished_sequences():
    """EOS = the 4th greedy token of prompt 0: its output stops there (EOS included) while the
    others run to max_new_tokens (unless they produce that token too), in the same batch."""
    runner = ToyRunner(seed=3)
    eos = reference_greedy(runner, PROMPTS[0], 4)[3]
    dec = _test_decoder(runner, PROMPTS, 4, depth=4, error_rate=0.2)
    out = dec.generate(PROMPTS, GenerationConfig(max_new_tokens=16, eos_token_ids=(eos,)))
    want = [reference_greedy(runner, p, 16, eos=(eos,)) for p in PROMPTS]
    assert out.tokens == want
    assert out.tokens[0][-1] == eos and len(out.tokens[0]) <= 4
    assert [s.generated for s in out.stats] == [len(t) for t in want]


def test_progress_callback_and_reuse():
    """on_progress runs every check_every steps with the batch's progress; a second generate on
    the same Decoder gives the same result."""
    runner = ToyRunner(seed=4)
    dec = _test_decoder(runner, PROMPTS[:2], 2, depth=2, error_rate=0.5)
    seen: list[ProgressInfo] = []
    live_tokens: list[list[list[int]]] = []  # read during the callback, as documented

    def on_progress(info: ProgressInfo) -> None:
        seen.append(info)
        live_tokens.append(info.tokens)

    cfg = GenerationConfig(max_new_tokens=9, check_every=2)
    out = dec.generate(PROMPTS[:2], cfg, on_progress=on_progress)
    assert seen and all(info.num_requests == 2 and info.steps % 2 == 0 for info in seen[:-1])
    assert seen[0].request_ids == [0, 1] and seen[0].num_finished == 0
    for info, tokens in zip(seen, live_tokens, strict=True):  # prefixes of the outputs
        for rid, toks, n in zip(info.request_ids, tokens, info.num_generated, strict=True):
            assert len(toks) == n and toks == out.tokens[rid][:n]
        assert info.num_finished + len(info.request_ids) == 2
    last = seen[-1]
    assert last.num_finished == 2 and last.request_ids == [] and last.done_tokens == 18
    assert [i.steps for i in seen] == sorted(i.steps for i in seen)
    assert dec.generate(PROMPTS[:2], cfg).tokens == out.tokens


def test_bad_inputs_raise_clear_errors():
    runner = ToyRunner()
    dec = build_decoder(runner, "ar", batch_size=2, max_len=16)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        dec.generate([[1], []], GenerationConfig(max_new_tokens=2))
    with pytest.raises(
        ValueError, match=r"10 prompt tokens \+ max_new_tokens 8 \+ 1 draft nodes = 19"
    ):
        dec.generate([list(range(10))], GenerationConfig(max_new_tokens=8))
    with pytest.raises(ValueError, match="token id 12 outside"):
        dec.generate([[1, 12]], GenerationConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="overlap_admissions='no'"):  # (a string is truthy)
        GenerationConfig(overlap_admissions="no")
    assert dec.generate([], GenerationConfig()).tokens == []


# ----------------------------------------------------------------------------- continuous batching

MANY = [
    [3, 1, 4],
    [9],
    [2, 6, 5, 3, 5, 8, 9, 7],
    [0, 0],
    [7, 7, 1],
    [5],
    [1, 2, 3, 4, 5, 6],
    [8, 2],
]


@pytest.mark.parametrize("max_reqs", [1, 3])
@pytest.mark.parametrize("drafter_kind", ["ar", "test", "test-branching"])
def test_continuous_batching_equals_reference_greedy(max_reqs, drafter_kind):
    """8 ragged prompts through max_reqs slots, finished slots refilled with the next prompt; an
    EOS makes requests end at different steps, so slots are refilled while others run. Every
    output equals the toy's greedy continuation (so the refilled slots' KV rows, text, root,
    counters and drafter state are right, and the other slots are untouched)."""
    runner = ToyRunner(seed=6)
    eos = reference_greedy(runner, MANY[0], 5)[4]
    dec = _decoder_of_kind(runner, drafter_kind, max_reqs)
    cfg = GenerationConfig(max_new_tokens=14, eos_token_ids=(eos,), check_every=2, continuous=True)
    seen: list[ProgressInfo] = []
    out = dec.generate(MANY, cfg, on_progress=seen.append)
    want = [reference_greedy(runner, p, 14, eos=(eos,)) for p in MANY]
    assert out.tokens == want
    assert len({len(t) for t in want}) > 1  # requests really end at different steps
    for s, w in zip(out.stats, want, strict=True):
        assert s.generated == len(w) and sum(s.accepted_hist) == s.steps >= 1
        assert s.decode_s > 0 and s.mat == pytest.approx(s.generated / s.steps)
    # progress counts finished requests' tokens apart from the live slots'
    last = seen[-1]
    assert last.num_finished == len(MANY) and last.request_ids == []
    assert last.done_tokens == sum(map(len, want))
    assert last.done_steps == sum(s.steps for s in out.stats)
    assert max(len(i.request_ids) for i in seen) == max_reqs
    # the same Decoder then runs a plain batched call correctly
    cfg_batched = GenerationConfig(max_new_tokens=14, eos_token_ids=(eos,))
    assert dec.generate(MANY[:max_reqs], cfg_batched).tokens == want[:max_reqs]


def test_continuous_batching_sets_up_the_drafter_of_refilled_slots():
    """Perfect drafts (error rate 0, depth 3): every request, refilled ones included, takes 12
    tokens in 3 steps. A refilled slot still drafting from its previous prompt's reference would
    be rejected and need more steps (drafter.start is what prevents that)."""
    runner = ToyRunner(seed=7)
    dec = _test_decoder(runner, MANY, 2, depth=3, error_rate=0.0)
    cfg = GenerationConfig(max_new_tokens=12, check_every=1, continuous=True, speculation="always")
    out = dec.generate(MANY, cfg)
    assert out.tokens == [reference_greedy(runner, p, 12) for p in MANY]
    assert [(s.steps, s.accepted_hist) for s in out.stats] == [(3, [0, 0, 0, 3])] * len(MANY)


def test_continuous_batching_with_sampling_is_reproducible():
    """Sampling through refilled slots: every request gets max_new_tokens ids from the vocabulary,
    and the same seed gives the same outputs."""
    runner = ToyRunner(seed=8)
    dec = _test_decoder(runner, MANY, 3, error_rate=0.3)
    cfg = GenerationConfig(max_new_tokens=9, temperature=1.0, seed=11, continuous=True)
    first = dec.generate(MANY, cfg).tokens
    assert [len(t) for t in first] == [9] * len(MANY)
    assert all(0 <= x < runner.vocab_size for t in first for x in t)
    assert dec.generate(MANY, cfg).tokens == first


# ----------------------------------------------------------------------------- adaptive speculation


@pytest.mark.parametrize("continuous", [False, True])
def test_plain_windows_between_drafting_windows_stay_lossless(monkeypatch, continuous):
    """Adaptive speculation switches between drafting and plain AR windows: forced to alternate
    (check_every 2), outputs still equal the greedy reference, plain windows emit one token per
    step, and drafting resumes with the drafter's state intact (perfect drafts keep being fully
    accepted: every drafting step of depth 3 emits 4 tokens)."""
    from samgpu.decoding import adaptive

    turns = iter([True, False] * 100)
    monkeypatch.setattr(adaptive.SpeculationPolicy, "choose", lambda self: next(turns))
    runner = ToyRunner(seed=9)
    dec = _test_decoder(runner, MANY, 3, depth=3, error_rate=0.0)
    cfg = GenerationConfig(max_new_tokens=14, check_every=2, continuous=continuous)
    out = dec.generate(MANY, cfg)
    assert out.tokens == [reference_greedy(runner, p, 14) for p in MANY]
    hists = [s.accepted_hist for s in out.stats]
    assert all(set(h[1:3]) == {0} for h in hists)  # a step accepts all 3 drafts or none
    assert all(h[0] >= 1 and h[3] >= 1 for h in hists)  # plain steps and full drafting steps
    assert 0 < out.run.drafting_steps < out.run.steps


def test_speculation_always_never_runs_plain_steps():
    runner = ToyRunner(seed=9)
    dec = _test_decoder(runner, MANY[:3], 3, depth=3, error_rate=1.0)
    out = dec.generate(MANY[:3], GenerationConfig(max_new_tokens=10, speculation="always"))
    assert out.run.drafting_steps == out.run.steps > 0


def test_policy_picks_the_faster_mode_and_explores():
    """SpeculationPolicy on synthetic windows: drafting first, then one plain window, then the
    faster mode, with a visit to the slower one in one window in `explore_every` on average (4x
    fewer when it loses by more than 20%), at random windows; windows that compiled (not clean)
    do not count."""
    from samgpu.decoding.adaptive import SpeculationPolicy

    def run(plain_rate: float, windows: int) -> list[bool]:
        policy = SpeculationPolicy(explore_every=4)
        seen = []
        for _ in range(windows):
            speculate = policy.choose()
            seen.append(speculate)
            rate = plain_rate if not speculate else 90.0
            policy.record(speculate, 8, int(rate), 1.0, clean=len(seen) > 1)
        assert policy.rates[False] > policy.rates[True]
        return seen

    close = run(100.0, 4004)  # plain steps 10% faster: drafting re-checked 1 window in 4
    assert close[:4] == [True, True, True, False]  # 1 unclean + 2 clean drafting, then plain
    visits = [i for i, s in enumerate(close) if s and i >= 4]
    assert 850 < len(visits) < 1150  # 1,000 expected
    assert {i % 2 for i in visits} == {0, 1}  # (not every 4th window: not phase-locked)
    far = run(200.0, 4004)  # plain steps twice as fast: drafting re-checked 1 window in 16
    assert 190 < sum(far[4:]) < 320  # 250 expected
    assert SpeculationPolicy(enabled=False).choose() is True


def test_policy_is_not_fooled_by_a_refill_every_other_window():
    """The case behind the random visits and the scheduler's rule that a window with an
    admission beside its steps does not count (H200, `merged` at B=64, sampled: refills every
    other window, each adding ~40% to a window's time whatever its mode): drafting pays at first,
    then plain steps are 10% faster; refill windows are 30% slower. With both rules the policy
    turns to plain steps; the negative control (the old rule: a visit in every 16th window,
    refill windows counted) measures plain steps in refill windows only and keeps drafting.
    (Either rule alone turns it here; the random visits also keep any other periodic pattern
    from locking in, the exclusion keeps the refills' noise out of the averages.)"""
    from samgpu.decoding.adaptive import SpeculationPolicy

    class EverySixteenth:  # the old rule: a visit in every 16th window (a count from 1)
        window = 0

        def random(self) -> float:
            return 0.0 if (self.window + 1) % 16 == 0 else 0.99

    def drafting_share(old: bool) -> float:
        policy = SpeculationPolicy()
        if old:
            policy._rng = EverySixteenth()
        seen = []
        for window in range(2000):
            if old:
                policy._rng.window = window
            speculate = policy.choose()
            seen.append(speculate)
            refill = window % 2 == 1
            draft = 120.0 if window < 200 else 90.0  # (drafting pays at first, then not)
            rate = (draft if speculate else 100.0) * (0.7 if refill else 1.0)
            policy.record(speculate, 8, int(rate), 1.0, clean=True, beside=refill and not old)
        return sum(seen[300:]) / len(seen[300:])

    assert drafting_share(old=False) < 0.15
    assert drafting_share(old=True) > 0.5


def test_policy_measures_a_batch_refilled_at_every_window():
    """Windows with an admission beside them are left out, but not more than `max_beside` in a
    row: with a refill in every window (plain steps 25% faster) the policy still measures both
    modes and runs plain steps. Negative control: leaving every such window out, it never
    measures and drafts forever."""
    from samgpu.decoding.adaptive import SpeculationPolicy

    def drafting_share(max_beside: int) -> float:
        policy = SpeculationPolicy(max_beside=max_beside)
        seen = []
        for _ in range(400):
            speculate = policy.choose()
            seen.append(speculate)
            policy.record(speculate, 8, 80 if speculate else 100, 1.0, clean=True, beside=True)
        return sum(seen[100:]) / 300

    assert drafting_share(3) < 0.15
    assert drafting_share(10**9) == 1.0


def test_policy_drafts_again_when_most_of_the_text_is_new():
    """Plain steps win on one request's text (drafting 50 vs plain 100 tokens/s); a new request
    (B=1: every admission) makes the next window draft and count alone, so a draftable new text
    (150) switches back at once. An admission of a few rows into a large batch does not; nor does
    the policy without the admission (negative control: it stays plain)."""
    from samgpu.decoding.adaptive import SpeculationPolicy

    def run(admit: tuple[int, int] | None) -> list[bool]:
        policy = SpeculationPolicy()
        seen = []
        for window in range(12):
            if window == 6 and admit is not None:
                policy.admitted(*admit)
            speculate = policy.choose()
            seen.append(speculate)
            draft_rate = 50 if window < 6 else 150
            policy.record(speculate, 8, draft_rate if speculate else 100, 1.0, clean=True)
        return seen

    assert run(None)[3:] == [False] * 9
    assert run((1, 1))[3:] == [False] * 3 + [True] * 6
    assert run((4, 64))[3:] == [False] * 9


def test_refill_policy_weighs_idle_slots_against_a_prefill_stall():
    """RefillPolicy: refill at once before any measurement and when every slot is free; then only
    when free * window_s >= (width - free) * call_s, call_s the cheapest call measured (a costly
    call, e.g. the first admission of the whole batch, does not raise it)."""
    from samgpu.decoding.adaptive import RefillPolicy

    policy = RefillPolicy()
    assert policy.should_refill(1, 64)  # nothing measured yet
    policy.record_prefill(0.005)
    policy.record_prefill(0.100)  # a big admission: the fixed cost stays 5 ms
    policy.record_window(0.016, 8)
    assert policy.call_s == 0.005
    assert not policy.should_refill(0, 64)
    assert not policy.should_refill(4, 64)  # 4 * 16 ms < 60 * 5 ms
    assert policy.should_refill(16, 64)  # 16 * 16 ms >= 48 * 5 ms
    assert policy.should_refill(64, 64)
    policy.record_prefill(0.0002)
    assert policy.should_refill(1, 64)  # cheap calls: refill every check
    average = RefillPolicy(call_s=0.040, window_s=0.016)  # negative control: a mean-like cost
    assert not average.should_refill(16, 64)


def test_refill_waits_a_time_not_a_count_of_checks():
    """Rent or buy: the idle slot-time of the checks that waited adds up, so 4 free slots of 64
    (16 ms windows, 5 ms calls: 300 ms of stall against 64 ms idled a check) refill at the fifth
    check, and with windows half as long (checks twice as often) at the tenth: the same time.
    Negative control: without the sum (each check alone), they never refill. A refill starts
    the sum again."""
    from samgpu.decoding.adaptive import RefillPolicy

    def checks_until_refill(window_s: float, summed: bool) -> int | None:
        policy = RefillPolicy(call_s=0.005, window_s=window_s)
        for check in range(1, 40):
            if not summed:
                policy.idle_s = 0.0
            if policy.should_refill(4, 64):
                assert policy.idle_s == 0.0
                return check
        return None

    assert checks_until_refill(0.016, summed=True) == 5
    assert checks_until_refill(0.008, summed=True) == 10
    assert checks_until_refill(0.016, summed=False) is None


def test_one_sequence_on_a_gpu_checks_every_4_steps():
    """The default check interval: 4 steps for one sequence on a GPU, 1 on a CPU, 8 for wider
    batches on either; check_every overrides it."""
    cfg = GenerationConfig(max_new_tokens=4)
    fixed = GenerationConfig(max_new_tokens=4, check_every=8)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [cfg.steps_per_check(cuda, 1), cfg.steps_per_check(cpu, 1)] == [4, 1]
    assert [cfg.steps_per_check(cuda, 2), cfg.steps_per_check(cpu, 2)] == [8, 8]
    assert fixed.steps_per_check(cuda, 1) == fixed.steps_per_check(cpu, 1) == 8


def test_deferred_refills_stay_lossless(monkeypatch):
    """Continuous batching with refills deferred until half the slots are free: every output still
    equals the greedy reference and every request runs."""
    from samgpu.decoding import adaptive

    monkeypatch.setattr(
        adaptive.RefillPolicy, "should_refill", lambda self, free, width: 2 * free >= width
    )
    runner = ToyRunner(seed=10)
    eos = reference_greedy(runner, MANY[0], 5)[4]
    dec = _test_decoder(runner, MANY, 4, error_rate=0.3)
    cfg = GenerationConfig(max_new_tokens=12, eos_token_ids=(eos,), check_every=2, continuous=True)
    out = dec.generate(MANY, cfg)
    assert out.tokens == [reference_greedy(runner, p, 12, eos=(eos,)) for p in MANY]


def test_refill_cost_is_learnt_from_refills_only(monkeypatch):
    """The first admission of a whole batch stalls no live slot: the refill policy learns its cost
    from later admissions only (one per refill call here). Recording the first one too (the old
    behaviour, a big call that held refills back) would add one more entry than refill calls."""
    from samgpu.decoding import adaptive

    recorded = []
    monkeypatch.setattr(adaptive.RefillPolicy, "record_prefill", lambda self, s: recorded.append(s))
    runner = ToyRunner(seed=10)
    dec = _test_decoder(runner, MANY, 4, error_rate=0.3)
    calls = []
    engine = dec.engine
    original = engine.prefill
    monkeypatch.setattr(
        engine, "prefill", lambda rows, p, k: calls.append(rows) or original(rows, p, k)
    )
    cfg = GenerationConfig(max_new_tokens=6, check_every=2, continuous=True)
    dec.generate(MANY, cfg)
    assert len(MANY) > 4 and len(calls) >= 2  # the first admission, then refills
    assert calls[0] == [0, 1, 2, 3]
    assert len(recorded) == len(calls) - 1


@pytest.mark.parametrize("check_every, steps", [(None, 4), (8, 8)])
def test_cpu_checks_every_step_so_no_step_is_wasted_after_eos(check_every, steps):
    """On a CPU a host check costs nothing: by default one sequence is checked after every step,
    so a request ending at its 4th token costs 4 forwards; with checks every 8 steps (the default
    elsewhere) it runs 8 (the negative control)."""
    runner = ToyRunner()
    eos = reference_greedy(runner, PROMPTS[0], 4)[3]
    assert eos not in reference_greedy(runner, PROMPTS[0], 3)
    calls = []
    forward = runner.forward_tree
    runner.forward_tree = lambda *a, **k: calls.append(1) or forward(*a, **k)
    dec = build_decoder(runner, "ar", batch_size=1, max_len=64)
    cfg = GenerationConfig(max_new_tokens=16, eos_token_ids=(eos,), check_every=check_every)
    assert cfg.steps_per_check(torch.device("cuda"), 2) == (check_every or 8)
    assert cfg.steps_per_check(torch.device("cpu"), 4) == (check_every or 8)
    out = dec.generate([PROMPTS[0]], cfg)
    assert out.tokens[0][-1] == eos and len(out.tokens[0]) == 4
    assert len(calls) == steps


def test_slot_steps_are_accounted_by_state():
    """RunStats' slot accounting, `ar` (one token a step), 2 slots, 3 prompts, checks every 2
    steps. Without EOS every request runs exactly 4 steps: steps 0-3 both slots live, then one
    refill and a slot with no prompt left (4 drained slot-steps): 16 slot-steps, 12 live. With
    the first prompt's 3rd token as EOS it ends a step before its check: 11 live, 1 slot-step
    past its end."""
    runner = ToyRunner(seed=0)  # (its 3rd token after MANY[0] occurs in no other output here)
    prompts = MANY[:3]
    dec = build_decoder(runner, "ar", batch_size=2, max_len=64)
    cfg = GenerationConfig(max_new_tokens=4, check_every=2, continuous=True)
    out = dec.generate(prompts, cfg)
    run = out.run
    live = sum(st.steps for st in out.stats)
    assert (run.slot_steps, live, run.free_drained_slot_steps) == (16, 12, 4)
    assert run.free_waiting_slot_steps == run.pending_slot_steps == 0
    assert (run.live_slot_steps, run.past_end_slot_steps) == (12, 0)
    assert run.drafting_steps == 0  # (`ar` never drafts)
    eos = reference_greedy(runner, prompts[0], 3)[2]
    others = [reference_greedy(runner, p, 4) for p in prompts[1:]]
    assert all(eos not in toks for toks in others)
    assert eos not in reference_greedy(runner, prompts[0], 2)
    out = dec.generate(prompts, GenerationConfig(**{**vars(cfg), "eos_token_ids": (eos,)}))
    run = out.run
    live = sum(st.steps for st in out.stats)
    past_end = run.slot_steps - live - run.free_drained_slot_steps - run.free_waiting_slot_steps
    assert (live, past_end) == (3 + 4 + 4, 1)
    assert (run.live_slot_steps, run.past_end_slot_steps) == (live, past_end)
    assert run.slot_steps == 2 * run.steps


def test_one_sequence_on_a_gpu_always_drafts():
    """speculation="adaptive" adapts everywhere except one sequence on a GPU (drafting every step
    measured faster there); "always" never adapts. Negative control: two sequences on a GPU and
    one on a CPU still adapt."""
    adaptive, always = (
        GenerationConfig(max_new_tokens=4),
        GenerationConfig(max_new_tokens=4, speculation="always"),
    )
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not adaptive.adapts_speculation(cuda, 1)
    assert adaptive.adapts_speculation(cuda, 2) and adaptive.adapts_speculation(cpu, 1)
    assert not always.adapts_speculation(cpu, 4)


def test_cpu_engine_calls_run_in_inference_mode():
    """On a CPU the prefills, steps and host reads run under torch.inference_mode (no autograd
    bookkeeping for each of a CPU step's small operators); the callbacks run outside it, and the
    state the drafter built there serves the next call, with refills and reuse lossless."""
    runner = ToyRunner(seed=6)
    modes: dict[str, list[bool]] = {"prefill": [], "forward": [], "callbacks": []}
    prefill, forward = runner.prefill, runner.forward_tree

    def traced(name, fn):
        return lambda *a, **k: modes[name].append(torch.is_inference_mode_enabled()) or fn(*a, **k)

    runner.prefill = traced("prefill", prefill)
    runner.forward_tree = traced("forward", forward)
    dec = _test_decoder(runner, PROMPTS, 2, depth=2, error_rate=0.3)
    cfg = GenerationConfig(max_new_tokens=7, check_every=2, continuous=True)
    callback = lambda *a: modes["callbacks"].append(torch.is_inference_mode_enabled())  # noqa: E731
    out = dec.generate(PROMPTS, cfg, on_progress=callback, on_finish=callback)
    assert out.tokens == [reference_greedy(runner, p, 7) for p in PROMPTS]
    assert len(modes["prefill"]) >= 2 and all(modes["prefill"]) and all(modes["forward"])
    assert modes["callbacks"] and not any(modes["callbacks"])
    assert dec.generate(PROMPTS, cfg).tokens == out.tokens
    assert not torch.is_inference_mode_enabled()


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_adaptive_threads_try_one_thread_for_decode_steps_only(two_threads):
    """adaptive_threads on a CPU: after two windows with all threads, a window runs with one
    (then whichever measured faster); every prefill runs with all of them, and the caller gets
    them back. Without it every step keeps them (the negative control). Lossless either way."""
    runner = ToyRunner(seed=7)
    threads: dict[str, list[int]] = {"prefill": [], "forward": []}
    prefill, forward = runner.prefill, runner.forward_tree

    def traced(name, fn):
        return lambda *a, **k: threads[name].append(torch.get_num_threads()) or fn(*a, **k)

    runner.prefill = traced("prefill", prefill)
    runner.forward_tree = traced("forward", forward)
    dec = build_decoder(runner, "ar", batch_size=2, max_len=64)
    for adaptive in (True, False):
        threads["prefill"].clear(), threads["forward"].clear()
        cfg = GenerationConfig(max_new_tokens=9, check_every=1, continuous=True,
                               adaptive_threads=adaptive)  # fmt: skip
        out = dec.generate(PROMPTS, cfg)
        assert out.tokens == [reference_greedy(runner, p, 9) for p in PROMPTS]
        assert torch.get_num_threads() == 2 and set(threads["prefill"]) == {2}
        assert threads["forward"][:2] == [2, 2]
        assert (1 in threads["forward"]) == adaptive
        assert out.run.single_thread_steps == threads["forward"].count(1)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7])
def test_admission_upload_parts_are_16_byte_aligned(n):
    """An admission uploads its keys, rows, lengths and prompts in one buffer; each part the
    kernels read must start at a multiple of 16 bytes for every n (Triton specializes pointers on
    that alignment: lengths at 12 n bytes compiled kernels anew whenever n % 4 changed, mid-run)
    and hold what it should. Control: a view 12 bytes into the prompts reads as unaligned."""
    dec = build_decoder(ToyRunner(), "ar", batch_size=8, max_len=64)
    prompts = [[3 + i] * (i + 2) for i in range(n)]
    rows = list(range(8 - n, 8))
    index, text, lens, _, _ = dec.engine._loader(rows, prompts, [11 * i for i in range(n)])

    def aligned(t: torch.Tensor) -> bool:
        return t.storage_offset() * t.element_size() % 16 == 0

    assert all(aligned(t) for t in (text, lens))
    assert index.tolist() == rows and lens.tolist() == [len(p) for p in prompts]
    assert [text[i, : len(p)].tolist() for i, p in enumerate(prompts)] == prompts
    assert not aligned(text.view(-1)[: 4 * 3 * 1][3:])  # control: 12 bytes in
