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
each mode has a measurement, then it re-runs the losing mode for one window once the windows
since its last visit are enough to keep the visit's expected cost (1 - its rate / the winner's)
at `explore_cost` of them: a mode losing by 10% is re-checked every 5 windows, one losing by 50%
every 25 (at most `max_period`). A revisited mode's rate is its new window's alone (its average
is stale: the text has moved on), so one good window is enough to switch back.

Example: sam+tr at B=1 emits 3.5 tokens per step at 1.1x a plain step's time -> it keeps
drafting; at B=256 it emits 1.3 tokens per step at 1.6x the time -> plain steps win and it drafts
only to re-check, one window in 10. At B=1 a drafting window costs little even when nothing is
accepted (~1.2x a plain one), while a stretch of text that drafts well emits several times more:
with re-checks every 16 or 64 windows and an average that needed several good windows to flip,
`merged` ran 12% of its steps plain on Spec-Bench and 9% slower than drafting every step
(2,640 vs 2,885 tok/s, H200, 2026-12-01).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class SpeculationPolicy:
    enabled: bool = True  # False: always draft (the method's own behaviour)
    explore_cost: float = 0.02  # a losing mode's visits cost at most this share of the windows
    max_period: int = 64  # windows between visits to the losing mode, at most
    smoothing: float = 0.3  # weight of the newest window in the moving average
    min_windows: int = 2  # clean drafting windows measured before plain steps are tried
    rates: dict[bool, float] = field(default_factory=dict)  # speculate -> tokens / s
    samples: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    steps: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    _windows: int = 0
    _last: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})  # last window run
    _previous: bool | None = None  # the mode of the last window recorded
    _new_text: bool = False  # most live requests were just admitted: drafting's rate is unknown
    _probe: bool = False  # the window chosen for that runs (its rate counts alone)

    def admitted(self, new: int, live: int) -> None:
        """`new` of the `live` requests were just admitted. When they are at least half (B=1:
        every admission), the drafting rate measured on the old text says little about theirs
        (a plain step's rate does not depend on the text): the next window drafts, and its rate
        counts alone (the window after the next with steps queued ahead: that one is chosen)."""
        if new > 0 and 2 * new >= live:
            self._new_text = True

    def period(self) -> int:
        """Windows between visits to the losing mode: its visit costs 1 - gap of a window."""
        gap = min(self.rates.values()) / max(max(self.rates.values()), 1e-9)
        return min(self.max_period, max(2, math.ceil((1.0 - gap) / self.explore_cost)))

    def choose(self) -> bool:
        """Whether the next window drafts."""
        if not self.enabled:
            return True
        self._windows += 1
        mode = self._choose()
        self._last[mode] = self._windows
        return mode

    def _choose(self) -> bool:
        if self._new_text:
            self._new_text, self._probe = False, True
            return True
        if self.samples[True] < self.min_windows:
            return True
        if self.samples[False] == 0:
            return False
        best = self.rates[True] >= self.rates[False]
        if self._windows - self._last[not best] >= self.period():
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
    ):
        """A finished window: `steps` steps emitting `tokens` in `seconds` with `live` requests
        running at its start; `clean` when no step compiled or captured. The rate compared is
        per live request (tokens / s / live): a step costs the same whatever share of the slots
        is live, so this compares the modes fairly while a static batch drains or slots wait for
        a refill."""
        self.steps[speculate] += steps
        revisit = self._probe or (self._previous is not None and self._previous != speculate)
        self._previous, self._probe = speculate, False
        if not clean or tokens <= 0 or seconds <= 0 or live <= 0:
            return
        rate = tokens / seconds / live
        old = None if revisit else self.rates.get(speculate)  # (a revisit: the average is stale)
        self.rates[speculate] = _ema(old, rate, self.smoothing)
        self.samples[speculate] += 1


@dataclass
class RefillPolicy:
    """Continuous batching: when to prefill waiting prompts into freed slots.

    A refill stalls every live slot while it runs. Its time has two parts: the prompts' own
    compute, which they cost whenever they are admitted (gathering refills saves none of it), and
    a fixed cost per call (host work, launches, padding to a graph bucket), which gathering saves.
    A freed slot left empty idles for a window of steps. So at each host check, with `free` of
    `width` slots free, refill when the idle slot-time of waiting one more window would exceed the
    stalled slot-time of the call's fixed cost:
        free * window_s >= (width - free) * call_s,
    with window_s a moving average of measured windows and call_s the cheapest refill call measured
    (little more than the fixed cost; before any measurement: refill at once). Example on an H200:
    SmolLM2 at B=64, windows of 8 steps ~12 ms, a refill call >= ~2 ms: refill once 10 slots are
    free. (An average call time instead, inflated by long prompts and the first admission of the
    whole batch, held refills back until almost every slot was free: 43% of slot-steps live.)
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

    def should_refill(self, free: int, width: int) -> bool:
        if free == 0:
            return False
        if free == width or self.call_s is None or self.window_s is None:
            return True
        return free * self.window_s >= (width - free) * self.call_s

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
