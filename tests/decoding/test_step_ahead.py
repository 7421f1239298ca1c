"""GenerationConfig.step_ahead (None: on CUDA): at a host check the next window's first step is
queued before the check's host work (collecting, admitting), which a GPU then overlaps with that
step; new requests join one step later. Same outputs as without (lossless) for ar, chains and
trees, with one-call and overlapped admissions, static and continuous batching, and budgets met
exactly; the control shows the step really comes before the admission only with it."""

from __future__ import annotations

import pytest
import torch

from samgpu.decoding.config import GenerationConfig
from tests.decoding.test_loop import MANY, ToyRunner, _decoder_of_kind, reference_greedy


def _trace(engine, events: list) -> None:
    """Log the engine's steps, flag reads and admissions into `events`."""
    for name in ("step", "read_flags", "prefill", "begin_prefill"):
        fn = getattr(engine, name)

        def traced(*a, _fn=fn, _name=name, **k):
            events.append(_name)
            return _fn(*a, **k)

        setattr(engine, name, traced)


def _run_traced(runner, kind: str, cfg: GenerationConfig) -> tuple[list[list[int]], int]:
    """A fresh decoder's outputs for MANY and how many checks queued a step before admitting."""
    dec = _decoder_of_kind(runner, kind, 3)
    events: list = []
    _trace(dec.engine, events)
    return dec.generate(MANY, cfg).tokens, _steps_before_admissions(events)


def _steps_before_admissions(events: list) -> int:
    """Checks at which a step was queued between the flag read and that check's admission."""
    count = 0
    for i, e in enumerate(events):
        if e != "read_flags":
            continue
        rest = events[i + 1 :]
        nxt = next((j for j, x in enumerate(rest) if x in ("prefill", "begin_prefill")), None)
        end = next((j for j, x in enumerate(rest) if x == "read_flags"), len(rest))
        if nxt is not None and nxt < end and "step" in rest[:nxt]:
            count += 1
    return count


@pytest.mark.parametrize("kind", ["ar", "test", "test-branching"])
@pytest.mark.parametrize("overlap", [False, True], ids=["one-call", "overlapped"])
def test_step_ahead_is_lossless_and_steps_before_admitting(kind, overlap):
    runner = ToyRunner(seed=11)
    eos = reference_greedy(runner, MANY[1], 5)[4]  # (requests end at different steps)
    want = [reference_greedy(runner, p, 9, eos=(eos,)) for p in MANY]
    assert len({len(w) for w in want}) > 1
    seen = {}
    for ahead in (False, True):
        cfg = GenerationConfig(
            max_new_tokens=9,
            check_every=2,
            continuous=True,
            overlap_admissions=overlap,
            step_ahead=ahead,
            eos_token_ids=(eos,),
        )
        tokens, seen[ahead] = _run_traced(runner, kind, cfg)
        assert tokens == want  # (budgets met exactly: 9 tokens unless an EOS came first)
    assert seen[True] >= 1 and seen[False] == 0, seen  # (the control: never without it)


def test_step_ahead_static_batches_and_eos():
    """Static batching (a batch admits when all are done: nothing to step ahead of then) and
    requests ending at an EOS id mid-window."""
    runner = ToyRunner(seed=12)
    eos = reference_greedy(runner, MANY[0], 6)[3]  # some token the toy emits
    want = [reference_greedy(runner, p, 12, eos=(eos,)) for p in MANY]
    assert any(len(w) < 12 for w in want)
    for continuous in (False, True):
        dec = _decoder_of_kind(runner, "test-branching", 3)
        cfg = GenerationConfig(
            max_new_tokens=12,
            check_every=3,
            continuous=continuous,
            eos_token_ids=(eos,),
            step_ahead=True,
        )
        assert dec.generate(MANY, cfg).tokens == want


def test_step_ahead_flag_is_checked():
    with pytest.raises(ValueError, match="step_ahead"):
        GenerationConfig(step_ahead="yes")


def test_step_ahead_default_is_cuda_only():
    """step_ahead=None: on CUDA, not on a CPU (its steps have run by the check); an explicit value
    wins. The CPU loop's default run takes no step ahead (control: the same trace with True)."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert GenerationConfig().steps_ahead(cuda) and not GenerationConfig().steps_ahead(cpu)
    assert GenerationConfig(step_ahead=True).steps_ahead(cpu)
    assert not GenerationConfig(step_ahead=False).steps_ahead(cuda)
    runner = ToyRunner(seed=13)
    seen = {}
    for ahead in (None, True):
        cfg = GenerationConfig(max_new_tokens=5, check_every=2, continuous=True, step_ahead=ahead)
        _, seen[ahead] = _run_traced(runner, "test", cfg)
    assert seen[None] == 0 and seen[True] >= 1, seen


@pytest.mark.parametrize("overlap", [False, True], ids=["one-call", "overlapped"])
def test_step_ahead_counts_admissions_once(monkeypatch, overlap):
    """With a step queued ahead, the check's admissions run inside the next window's time: they
    count as prefill, not as decode too (the shares partition the call: prefill + steps <= the
    whole), and the windows the refill and speculation policies measure leave them out."""
    import time

    from samgpu.decoding import adaptive

    runner = ToyRunner(seed=14)
    dec = _decoder_of_kind(runner, "test", 2)
    slow = 0.02  # every admission's host call takes >= 20 ms, a window of steps far less
    for name in ("prefill", "begin_prefill", "end_prefill"):
        fn = getattr(dec.engine, name)

        def slowed(*a, _fn=fn, **k):
            time.sleep(slow)
            return _fn(*a, **k)

        setattr(dec.engine, name, slowed)
    windows = []
    record = adaptive.RefillPolicy.record_window
    monkeypatch.setattr(
        adaptive.RefillPolicy,
        "record_window",
        lambda self, s, n: (windows.append(s), record(self, s, n))[1],
    )
    cfg = GenerationConfig(
        max_new_tokens=6,
        check_every=2,
        continuous=True,
        overlap_admissions=overlap,
        step_ahead=True,
    )
    run = dec.generate(MANY, cfg).run
    assert run.prefill_s >= slow * 3  # (several admissions)
    assert run.prefill_s + run.steps_s <= run.seconds + 1e-6
    assert max(windows) < slow, windows


@pytest.mark.parametrize("kind", ["ar", "test-branching"])
def test_a_request_the_host_ends_gets_no_token_from_the_step_queued_ahead(kind, monkeypatch):
    """A request ended at a check by the host (stop_when) is marked finished before the next
    window's first step is queued, and its output is the tokens that check saw. On a CPU the
    check's read runs after that step (on CUDA it reads beside it), so the negative control
    (end_rows skipped) shows the step would have appended to the ended request."""
    runner = ToyRunner(seed=15)
    cfg = GenerationConfig(max_new_tokens=12, check_every=2, continuous=True, step_ahead=True)
    for skip_end_rows in (False, True):
        dec = _decoder_of_kind(runner, kind, 3)
        if skip_end_rows:
            monkeypatch.setattr(dec.engine, "end_rows", lambda rows: None)
        seen = {}

        def stop_when(i, toks, seen=seen):
            if i == 1 and len(toks) >= 3 and i not in seen:
                seen[i] = list(toks)
                return True
            return False

        out = dec.generate(MANY, cfg, stop_when=stop_when)
        want = reference_greedy(runner, MANY[1], 12)
        assert out.tokens[1] == want[: len(out.tokens[1])]  # a prefix either way (lossless)
        if skip_end_rows:
            assert len(out.tokens[1]) > len(seen[1])
        else:
            assert out.tokens[1] == seen[1]
