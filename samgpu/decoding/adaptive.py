"""The scheduler's measured decisions: adaptive speculation (SpeculationPolicy) and, for continuous
batching, when to refill freed slots (RefillPolicy). Both decide at host checks only, from times
the scheduler measures anyway, so they add no sync.

Adaptive speculation: per window of steps between host checks, draft or run plain AR steps,
whichever has emitted tokens faster on this batch lately.

Drafting pays when the accepted tokens per step outgrow the extra cost of verifying a tree: at
batch 1 on a GPU almost always, at large batches or on a CPU often not (a step then costs about
N times a plain one). Rather than a cost model, the scheduler measures both: each window's rate
is tokens emitted / wall time from its first launch to its flag read (the GPU's work on it; host
work between windows is left out), kept as an exponential moving average per mode. Windows that
compiled or captured a graph are not counted, and rates are per live request, so that a batch
draining (or waiting for a refill) during one mode's window does not count against that mode.
Decisions happen at host checks only, so there is no extra sync. The policy explores: until
each mode has a measurement, then in one window in `explore_every` on average, at random, it runs
the other mode, so a change in the batch (requests ending, easier text) is noticed; a mode losing
by more than 20% is visited 4x less often. The cost of exploring is one window in `explore_every`
(or 4x that) at the worse rate. Windows in which an admission ran beside the steps are not counted
(at most `max_beside` in a row, so that a batch refilled at every check is still measured): the
admission's GPU work (its prefill; for the automaton methods also the drafter's prepare over the
prompts) falls on whichever mode runs then. Both rules come from one run (H200, SmolLM2, B=64,
sampled at T 0.8, 2026-12-02): refills came every other window and added 3-7 ms to a `merged`
window of 12-18 ms; exploring every 16th window put every plain window measured in a refill's
window, so plain steps measured 15-20% slower than they were, and the policy drafted 66% of the
steps while plain steps were the faster mode (`merged` 0.87x `ar`, below both its all-plain and
its always-drafting runs; profiling/trace_windows.py). New text: a plain step's rate does not
depend on the text, drafting's does; when most live requests were just admitted (B=1: every
admission), the next window drafts and its rate replaces drafting's average (`admitted`).

Example: sam+tr at B=1 emits 3.5 tokens per step at 1.1x a plain step's time -> it keeps
drafting; at B=256 it emits 1.3 tokens per step at 1.6x the time -> plain steps win and it drafts
only to re-check, one window in 16. At B=1 an average carried from one request to the next kept
a draftable answer on plain steps for its whole length (~8 windows of 8 steps): on Spec-Bench
(H200, 2026-12-01) `merged` ran 2.62x `ar` adaptive, 2.69x with the new-text probe (that run also
re-checked the losing mode more often, a rule not kept: mixed at B=64-256), and 2.83x drafting
every step, which one sequence on a GPU now does (GenerationConfig.adapts_speculation).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass
class SpeculationPolicy:
    enabled: bool = True  # False: always draft (the method's own behaviour)
    explore_every: int = 16  # windows between visits to the mode currently losing
    smoothing: float = 0.3  # weight of the newest window in the moving average
    min_windows: int = 2  # clean drafting windows measured before plain steps are tried
    rates: dict[bool, float] = field(default_factory=dict)  # speculate -> tokens / s
    samples: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    steps: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    max_beside: int = 3  # windows with an admission beside them left out in a row, at most
    _rng: random.Random = field(default_factory=lambda: random.Random(0))  # (reproducible runs)
    _beside_run: int = 0  # windows in a row with an admission beside them
    _new_text: bool = False  # most live requests were just admitted: drafting's rate is unknown
    _probe: bool = False  # the window chosen for that is running (its rate counts alone)

    def admitted(self, new: int, live: int) -> None:
        """`new` of the `live` requests were just admitted. When they are at least half (B=1:
        every admission), the drafting rate measured on the old text says little about theirs:
        the next window chosen drafts, and its rate replaces drafting's average."""
        if new > 0 and 2 * new >= live:
            self._new_text = True

    def choose(self) -> bool:
        """Whether the next window drafts."""
        if not self.enabled:
            return True
        if self._new_text:
            self._new_text, self._probe = False, True
            return True
        if self.samples[True] < self.min_windows:
            return True
        if self.samples[False] == 0:
            return False
        best = self.rates[True] >= self.rates[False]
        gap = min(self.rates.values()) / max(max(self.rates.values()), 1e-9)
        # a clearly losing mode is re-checked less often: exploring it costs more
        period = self.explore_every * (4 if gap < 0.8 else 1)
        # at random windows, not every period-th: a fixed period locks onto the refill cycle
        # (a refill every other window put every re-check of plain steps in a refill's window)
        if self._rng.random() * period < 1:
            return not best
        return best

    def record(
        self,
        speculate: bool,
        steps: int,
        tokens: int,
        seconds: float,
        clean: bool,
        live: int = 1,
        beside: bool = False,
    ):
        """A finished window: `steps` steps emitting `tokens` in `seconds` with `live` requests
        running at its start; `clean` when no step compiled or captured; `beside` when an
        admission ran beside its steps (left out, unless the last `max_beside` windows all had
        one: a batch refilled at every check is measured all the same). The rate compared is
        per live request (tokens / s / live): a step costs the same whatever share of the slots
        is live, so this compares the modes fairly while a static batch drains or slots wait for
        a refill."""
        self.steps[speculate] += steps
        probe, self._probe = self._probe, False
        self._beside_run = self._beside_run + 1 if beside else 0
        if beside and self._beside_run <= self.max_beside:
            return
        if not clean or tokens <= 0 or seconds <= 0 or live <= 0:
            return
        rate = tokens / seconds / live
        old = None if probe else self.rates.get(speculate)  # (new text: the average is stale)
        self.rates[speculate] = _ema(old, rate, self.smoothing)
        self.samples[speculate] += 1


@dataclass
class RefillPolicy:
    """Continuous batching: when to prefill waiting prompts into freed slots.

    A refill stalls every live slot while it runs. Its time has two parts: the prompts' own
    compute, which they cost whenever they are admitted (gathering refills saves none of it), and
    a fixed cost per call (host work, launches, padding to a graph bucket), which gathering saves.
    A freed slot left empty idles for a window of steps. So, rent or buy: at each host check, with
    `free` of `width` slots free, refill once the slot-time idled since the last refill (`idle_s`,
    summed over the checks that waited) plus that of waiting one more window reaches the stalled
    slot-time of the call's fixed cost:
        idle_s + free * window_s >= (width - free) * call_s,
    with window_s a moving average of measured windows and call_s the cheapest refill call measured
    (little more than the fixed cost; before any measurement: refill at once). Example on an H200:
    SmolLM2 at B=64, windows of 8 steps ~12 ms, a refill call >= ~2 ms: 10 free slots refill at
    once (10 * 12 >= 54 * 2 ms), 2 (if no more free up) at the sixth check. Summing makes the
    wait a time, not a count of checks: the rule without idle_s waited for as many free slots
    whatever the window, so shorter windows held refills back longer (H200, 2026-12-01: `ar` at
    B=256 with --check-every 4, 10% fewer tokens/s, 5.6% of slot-steps free while prompts waited
    against 1.4%). (An average call time instead of the cheapest, inflated by long prompts and
    the first admission of the whole batch, held refills back until almost every slot was free:
    43% of slot-steps live.)
    With no live request left there is nothing to stall: refill.
    Overlapped admissions (the scheduler's, on CUDA): the prefill runs beside the live slots'
    steps, so call_s is what still stalls them (host work, the landing); the admission lands
    mid-window when its prefill should be done (`landing_step`).
    """

    smoothing: float = 0.3
    call_s: float | None = None  # seconds of the cheapest refill call measured
    window_s: float | None = None  # seconds per window of steps
    step_s: float | None = None  # seconds per step
    launch_s: float | None = None  # GPU seconds of an overlapped admission's prefill
    idle_s: float = 0.0  # slot-seconds idled at the checks that waited since the last refill

    def should_refill(self, free: int, width: int) -> bool:
        """Whether to refill now (called once per host check with prompts waiting)."""
        if free == 0:
            return False
        if free == width or self.call_s is None or self.window_s is None:
            self.idle_s = 0.0
            return True
        waited = self.idle_s + free * self.window_s
        if waited >= (width - free) * self.call_s:
            self.idle_s = 0.0
            return True
        self.idle_s = waited
        return False

    def record_prefill(self, seconds: float) -> None:
        self.call_s = seconds if self.call_s is None else min(self.call_s, seconds)

    def record_window(self, seconds: float, steps: int) -> None:
        self.window_s = _ema(self.window_s, seconds, self.smoothing)
        self.step_s = _ema(self.step_s, seconds / steps, self.smoothing)

    def record_launch(self, seconds: float) -> None:
        self.launch_s = _ema(self.launch_s, seconds, self.smoothing)

    def landing_step(self, window: int) -> int | None:
        """Overlapped admissions: the step of the next window (of `window` steps, the prefill
        launched just before it) after which the admission lands, when its prefill should be
        done: launch_s / step_s rounded up (late idles the new slots up to a step; early stalls
        the live ones until the prefill ends). None: at the check after the window (also until
        both are measured)."""
        if self.launch_s is None or self.step_s is None:
            return None
        due = math.ceil(self.launch_s / self.step_s)
        return due if due < window else None


def _ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else old + weight * (new - old)
