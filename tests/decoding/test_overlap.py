"""Overlapped admissions (GenerationConfig.overlap_admissions; samgpu.decoding.scheduler): with
continuous batching, a refill beside live slots is prefilled during their next window and joins
at the check after it (Engine.begin_prefill / end_prefill). On a CPU it runs in turn (forced on
here); the outputs must still equal the toy's greedy continuation token for token."""

from __future__ import annotations

import pytest
import torch

from samgpu.decoding.config import GenerationConfig
from samgpu.factory import build_decoder
from tests.decoding.test_loop import (
    MANY,
    ToyRunner,
    _decoder_of_kind,
    reference_greedy,
)

MAX_NEW = 14


def _toy() -> tuple[ToyRunner, int, list[list[int]]]:
    """The toy model, an EOS id that ends MANY's requests at different steps, and the greedy
    reference outputs."""
    runner = ToyRunner(seed=6)
    eos = reference_greedy(runner, MANY[0], 5)[4]
    return runner, eos, [reference_greedy(runner, p, MAX_NEW, eos=(eos,)) for p in MANY]


def _config(eos: int, overlap: bool | None = True, check_every: int = 2) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=MAX_NEW,
        eos_token_ids=(eos,),
        check_every=check_every,
        continuous=True,
        overlap_admissions=overlap,
    )


def _counted(monkeypatch, engine) -> dict[str, list]:
    """Calls of the engine's admissions: one-call prefills and launched halves."""
    calls: dict[str, list] = {"prefill": [], "begin": []}
    for name, key in (("prefill", "prefill"), ("begin_prefill", "begin")):
        original = getattr(engine, name)

        def wrapped(rows, prompts, keys=None, original=original, key=key):
            calls[key].append(list(rows))
            return original(rows, prompts, keys)

        monkeypatch.setattr(engine, name, wrapped)
    return calls


@pytest.mark.parametrize("max_reqs", [2, 3])
@pytest.mark.parametrize("drafter_kind", ["ar", "test", "test-branching"])
def test_overlapped_admissions_equal_reference_greedy(monkeypatch, max_reqs, drafter_kind):
    """8 ragged prompts, EOS ending requests at different steps: refills are launched beside the
    live slots and land a window later; every output equals the greedy reference, every request
    is counted once, and the refills really went through begin_prefill."""
    runner, eos, want = _toy()
    dec = _decoder_of_kind(runner, drafter_kind, max_reqs)
    calls = _counted(monkeypatch, dec.engine)
    out = dec.generate(MANY, _config(eos))
    assert out.tokens == want
    assert len(calls["begin"]) >= 1 and calls["prefill"][0] == list(range(max_reqs))
    launched = sum(len(rows) for rows in calls["begin"] + calls["prefill"])
    assert launched == len(MANY)  # every request admitted once (begin took every prompt given)
    for s, w in zip(out.stats, want, strict=True):
        assert s.generated == len(w) and sum(s.accepted_hist) == s.steps >= 1
        assert s.decode_s > 0 and s.prefill_s > 0


def test_overlap_off_admits_in_one_call(monkeypatch):
    """The control of the test above: overlap_admissions=False never launches a half (and the
    default on a CPU is off)."""
    runner, eos, want = _toy()
    for overlap in (False, None):
        dec = build_decoder(runner, "ar", batch_size=3, max_len=64)
        calls = _counted(monkeypatch, dec.engine)
        assert dec.generate(MANY, _config(eos, overlap)).tokens == want
        assert calls["begin"] == [] and len(calls["prefill"]) >= 2


def test_negative_control_a_landing_without_its_kv_differs(monkeypatch):
    """Landings that leave the prompts' K/V in the launch's scratch (the first admission, in place,
    is unaffected) must fail the comparison: refilled requests then decode from stale rows."""
    from samgpu.decoding.prefill import Prefiller

    monkeypatch.setattr(Prefiller, "_copy_in", lambda self, index, scratch, n, width: None)
    runner, eos, want = _toy()
    dec = build_decoder(runner, "ar", batch_size=3, max_len=64)
    calls = _counted(monkeypatch, dec.engine)
    out = dec.generate(MANY, _config(eos))
    assert out.tokens[:3] == want[:3] and out.tokens != want
    assert calls["prefill"] == [[0, 1, 2]]  # every refill went through a landing


def test_begin_prefill_twice_and_end_without_begin():
    runner = ToyRunner(seed=6)
    dec = build_decoder(runner, "ar", batch_size=3, max_len=64)
    engine = dec.engine
    engine.configure(GenerationConfig(max_new_tokens=4), 3)
    assert engine.end_prefill() == []
    landing = engine.begin_prefill([1, 2], [[3, 4], [5]])
    assert landing.count == 2 and landing.gpu_seconds() is None  # (no GPU: not timed)
    with pytest.raises(RuntimeError, match="pending"):
        engine.begin_prefill([0], [[1]])
    with pytest.raises(RuntimeError, match="pending"):
        engine.prefill([0], [[1]])
    assert engine.end_prefill() == [1, 2]
    assert engine.state.cache_len[1:].tolist() == [1, 0]
    assert engine.state.finished.tolist() == [True, False, False]


def test_admissions_landing_mid_window_equal_reference_greedy(monkeypatch):
    """On CUDA an overlapped admission lands between the queued steps of the window after its
    launch, once its prefill should be done (RefillPolicy.landing_step; on a CPU never timed,
    forced here): outputs still equal the greedy reference, and the landings did happen there."""
    from samgpu.decoding import adaptive

    monkeypatch.setattr(adaptive.RefillPolicy, "landing_step", lambda self, window: 1)
    runner, eos, want = _toy()
    dec = _decoder_of_kind(runner, "test-branching", 3)
    engine, steps, ends = dec.engine, [], []
    step, end = engine.step, engine.end_prefill
    monkeypatch.setattr(engine, "step", lambda: steps.append(1) or step())
    monkeypatch.setattr(engine, "end_prefill", lambda: ends.append(len(steps)) or end())
    out = dec.generate(MANY, _config(eos, check_every=4))
    assert out.tokens == want
    assert len(ends) >= 2 and all(n % 4 == 1 for n in ends)  # after a window's first step


def test_landing_step_waits_for_the_prefill():
    from samgpu.decoding.adaptive import RefillPolicy

    policy = RefillPolicy()
    assert policy.landing_step(8) is None  # nothing measured: at the next check
    policy.record_window(0.016, 8)  # 2 ms steps
    assert policy.landing_step(8) is None
    policy.record_launch(0.0061)
    assert policy.landing_step(8) == 4  # 6.1 ms: after the 4th step (rounded up)
    assert policy.landing_step(4) is None  # not within the window: at the check


def test_a_call_interrupted_with_an_admission_pending_leaves_the_engine_usable(monkeypatch):
    """A callback raising (Ctrl-C) while a launched admission waits for its landing: the next
    call on the same decoder runs normally and stays lossless."""
    runner, eos, want = _toy()
    dec = build_decoder(runner, "ar", batch_size=3, max_len=64)
    calls = _counted(monkeypatch, dec.engine)
    landed = []
    end = dec.engine.end_prefill
    monkeypatch.setattr(dec.engine, "end_prefill", lambda: landed.extend(end()) or landed)

    def stop_once_launched(info):
        if sum(map(len, calls["begin"])) > len(landed):  # an admission waits for its landing
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dec.generate(MANY, _config(eos), on_progress=stop_once_launched)
    assert sum(map(len, calls["begin"])) > len(landed)  # it stopped with one pending
    assert dec.generate(MANY, _config(eos)).tokens == want


def test_default_overlap_rule():
    """overlap_admissions=None: on CUDA from OVERLAP_MIN_SLOTS slots; never on a CPU; an explicit
    value wins."""
    from samgpu.decoding.config import OVERLAP_MIN_SLOTS

    cuda, cpu, cfg = torch.device("cuda"), torch.device("cpu"), GenerationConfig()
    assert cfg.overlaps(cuda, OVERLAP_MIN_SLOTS) and not cfg.overlaps(cuda, OVERLAP_MIN_SLOTS - 1)
    assert not cfg.overlaps(cpu, 1024)
    assert GenerationConfig(overlap_admissions=True).overlaps(cpu, 1)
    assert not GenerationConfig(overlap_admissions=False).overlaps(cuda, 1024)


@pytest.mark.parametrize(
    ("method", "options", "prepared"),
    [("sam", {"use_static": False}, [[1]]), ("pld", {}, [])],
)
def test_a_launch_leaves_the_slots_text_to_the_last_request(monkeypatch, method, options, prepared):
    """Until an admission lands, its slots' rows of state.text keep the last request's text:
    the other slots' steps go on meanwhile, and a drafter reading the text drafts for the
    finished slot too (pld: its drafts must be tokens of the vocabulary; a launch that wrote the
    padded prompts there crashed pld on an H200, a gather out of bounds). The drafter's prepare
    runs at the launch, inline here as it would on the second stream, on a scratch; a drafter
    with nothing to prepare (pld) gets no work beside the steps."""
    import samgpu.decoding.prefill as prefill

    launch = prefill.Prefiller.launch
    seen = []

    def inline(self, rows, prompts, beside=None):  # the launch's beside, as on CUDA
        landing = launch(self, rows, prompts)
        if beside is not None:
            beside()
            landing.beside_ran = True
            seen.append(rows)
        return landing

    monkeypatch.setattr(prefill.Prefiller, "launch", inline)
    runner = ToyRunner(seed=6)
    dec = build_decoder(runner, method, batch_size=2, max_len=64, options=options)
    engine = dec.engine
    engine.configure(GenerationConfig(max_new_tokens=20), 2)
    engine.prefill([0, 1], [[3, 4, 5, 3, 4, 5, 3, 4], [5, 6, 7, 5, 6, 7, 5, 6, 7]])
    for _ in range(3):
        engine.step()
    engine.begin_collect([1])()
    before = engine.state.text[1].clone()
    engine.begin_prefill([1], [[9, 8]])
    assert seen == prepared
    assert torch.equal(engine.state.text[1], before)
    engine.step()  # (pld drafts for the finished slot 1 from its old text)
    assert int(engine._views.tree.tokens[1].min()) >= 0
    engine.end_prefill()
    assert engine.state.text[1, :2].tolist() == [9, 8]


def test_a_landing_resets_the_rows_of_the_mode_running_then(monkeypatch):
    """An admission launched while drafting steps ran and landed after the loop turned to plain
    steps resets its rows in the plain steps' buffers (the ones the next steps read), not only in
    the drafting ones. Negative control: the rows of the other mode's buffers keep what the
    finished request's last step left there."""
    runner = ToyRunner(seed=7)
    dec = build_decoder(runner, "pld", batch_size=2, max_len=64)
    engine = dec.engine
    engine.configure(GenerationConfig(max_new_tokens=20), 2)
    engine.prefill([0, 1], [[3, 4, 5], [5, 6, 7]])
    engine.set_speculate(False)
    engine.step()  # (plain steps write num_new of both rows in the plain buffers)
    engine.set_speculate(True)
    engine.step()
    engine.begin_collect([1])()
    engine.begin_prefill([1], [[9, 8]])
    engine.set_speculate(False)
    engine.end_prefill()
    assert int(engine._plain.step.num_new[1]) == 0  # reset where the next step reads
    assert int(engine._full.step.num_new[1]) > 0  # the control: the other mode's, untouched
