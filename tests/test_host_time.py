"""profiling/host_time.py's timers on a toy decoder: each timed engine call is counted (steps, flag
reads, admissions, collections as the loop makes them), reset per generate call, and uninstall
puts every original back."""

from __future__ import annotations

from profiling.host_time import Timers
from samgpu.decoding.config import GenerationConfig
from samgpu.decoding.engine import Engine
from samgpu.decoding.scheduler import Scheduler
from tests.decoding.test_loop import MANY, ToyRunner, _decoder_of_kind, reference_greedy


def test_timers_count_the_loops_calls_and_uninstall():
    originals = (Engine.step, Engine.read_flags, Engine.begin_collect, Scheduler.generate)
    timers = Timers()
    timers.install()
    try:
        runner = ToyRunner(seed=5)
        dec = _decoder_of_kind(runner, "ar", 3)
        cfg = GenerationConfig(max_new_tokens=6, check_every=2, continuous=True)
        out = dec.generate(MANY, cfg)
        assert out.tokens == [reference_greedy(runner, p, 6) for p in MANY]
        assert timers.calls["Engine.step"] == out.run.steps
        assert timers.calls["Engine.read_flags"] == out.run.steps // 2
        assert timers.calls["Engine.prefill"] >= 2 and timers.calls["Engine.begin_collect"] >= 2
        assert timers.generate_s > 0 and timers.seconds["Engine.step"] > 0
        dec.generate(MANY[:1], cfg)  # a second call starts from zero
        assert timers.calls["Engine.prefill"] == 1
    finally:
        timers.uninstall()
    assert (Engine.step, Engine.read_flags, Engine.begin_collect, Scheduler.generate) == originals
