"""Deferred on_finish (Scheduler.defer_finish; on CUDA by default): a request collected at a host
check is reported after the next window's steps are queued, so that the callback's host work
(detokenizing, writing a record) runs while the GPU steps. Same outputs, same callbacks, one
window later; an interrupt still reports what had finished."""

from __future__ import annotations

import pytest

from samgpu.decoding.config import GenerationConfig
from tests.decoding.test_loop import MANY, ToyRunner, _decoder_of_kind, reference_greedy


def _traced(dec, events: list):
    """Log engine steps and flag reads into `events` beside the callbacks' entries."""
    step, read = dec.engine.step, dec.engine.read_flags

    def traced_step():
        events.append(("step",))
        return step()

    def traced_read():
        events.append(("read",))
        return read()

    dec.engine.step, dec.engine.read_flags = traced_step, traced_read


def _run(defer: bool, kind: str = "ar"):
    runner = ToyRunner(seed=3)
    dec = _decoder_of_kind(runner, kind, 3)
    dec.defer_finish = defer
    events: list = []
    _traced(dec, events)
    cfg = GenerationConfig(max_new_tokens=9, check_every=2, continuous=True)
    out = dec.generate(MANY, cfg, on_finish=lambda i, toks, st: events.append(("finish", i)))
    return runner, out, events


@pytest.mark.parametrize("kind", ["ar", "test-branching"])
def test_deferred_reports_are_the_same_one_window_later(kind):
    runner, out, events = _run(True, kind)
    _, ref_out, ref_events = _run(False, kind)
    assert out.tokens == ref_out.tokens == [reference_greedy(runner, p, 9) for p in MANY]
    finishes = [e[1] for e in events if e[0] == "finish"]
    assert finishes == [e[1] for e in ref_events if e[0] == "finish"]  # same order
    assert sorted(finishes) == list(range(len(MANY)))  # each request once
    # Deferred: a report follows a step queued after the check that collected it, never a
    # flag read directly (all but the last check's reports, which come after the loop).
    before = [events[i - 1][0] for i, e in enumerate(events) if e[0] == "finish" and i]
    assert before and set(before) <= {"step", "finish", "read"}
    assert "step" in before
    after_loop = len(events) - 1 - max(i for i, e in enumerate(events) if e[0] == "read")
    assert 0 < after_loop < len(finishes)
    # Control: undeferred, every report follows the flag read of its check directly.
    ref_before = {ref_events[i - 1][0] for i, e in enumerate(ref_events) if e[0] == "finish"}
    assert ref_before <= {"read", "finish"}


def test_interrupt_reports_what_finished_but_not_after_a_failed_callback():
    """A KeyboardInterrupt in the step after a check that collected requests: their reports,
    still queued, are made before it propagates (a file run keeps their records). A callback
    that raises is the last one called."""
    runner = ToyRunner(seed=3)
    dec = _decoder_of_kind(runner, "ar", 3)
    dec.defer_finish = True
    cfg = GenerationConfig(max_new_tokens=9, check_every=2, continuous=True)
    engine = dec.engine
    step, collect = engine.step, engine.begin_collect
    collected: list[int] = []

    def counted_collect(rows, **kw):
        collected.extend(rows)
        return collect(rows, **kw)

    def interrupted_step():
        if collected:  # the first step queued after a check that collected some
            raise KeyboardInterrupt
        return step()

    engine.step, engine.begin_collect = interrupted_step, counted_collect
    reported: list[int] = []

    def on_finish(i, toks, st):
        reported.append(i)
        assert toks == reference_greedy(runner, MANY[i], 9)

    with pytest.raises(KeyboardInterrupt):
        dec.generate(MANY, cfg, on_finish=on_finish)
    assert collected and len(reported) == len(collected)
    engine.step, engine.begin_collect = step, collect

    calls: list[int] = []

    def failing(i, toks, st):
        calls.append(i)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        dec.generate(MANY, cfg, on_finish=failing)
    assert len(calls) == 1
    # the decoder serves the next call
    assert dec.generate(MANY, cfg).tokens == [reference_greedy(runner, p, 9) for p in MANY]
