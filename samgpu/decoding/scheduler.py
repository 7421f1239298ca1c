"""The scheduler: the one host loop. Requests wait in a queue, are admitted into free slots of the
engine, decode together, and are collected as they finish.

    scheduler = Scheduler(engine)
    out = scheduler.generate(prompts, GenerationConfig(max_new_tokens=64, continuous=True))

Loop: admit -> run `check_every` steps (default 8; for one sequence 1 on a CPU, 4 on a GPU) ->
read the flags (the only host read) -> collect the finished requests (tokens, statistics,
`drafter.finish`, `on_finish`) -> admit again -> ...
On CUDA (`defer_finish`) the collected requests' `on_finish` calls (a file run detokenizes and
writes each record: ~0.15 ms a request on the H200's host) are made once the next window's steps
are queued, while the GPU runs them, instead of while it waits at the check; with
`config.steps_ahead` (CUDA) the next window's first step is queued before the check's collection
and admission too.
- Continuous batching (`config.continuous`): the batch has min(max_reqs, #prompts) slots; at a
  host check, slots whose request finished take the next waiting prompts (`engine.prefill` of
  those rows: the other slots carry on, and the captured graph is reused since B and the buffers
  do not change) when RefillPolicy finds the freed slots' idle time worth a prefill call's stall
  of the others (samgpu.decoding.adaptive).
  Overlapped admissions (`config.overlaps`: by default on CUDA from OVERLAP_MIN_SLOTS slots):
  a refill beside live slots is launched (`engine.begin_prefill`: its prefill on a second
  stream) and lands (`engine.end_prefill`) between the queued steps of the next window, once its
  prefill should be done (RefillPolicy.landing_step), or at the next check: the live slots are
  not stalled for it.
- Static batching (the default): the same loop, admitting only when every slot is free: each batch
  of min(max_reqs, #waiting) prompts runs until its longest request ends.
Every live request emits at least one token per step, so a request that has run max_new_tokens
steps is finished; the loop collects it then whatever its flag says (a safety bound).
Adaptive speculation (`config.speculation == "adaptive"`, the default): before each window the
policy of samgpu.decoding.adaptive picks drafting or plain AR steps from the rates it measured.
Outputs are the same either way (lossless; in float32 bit for bit, in bfloat16 up to the
near-ties that any change of step shape can flip), sampled ones too: a request's tokens are drawn
from noise keyed by its position (kernels/randoms.py), not by the steps' shapes.

On a CPU the engine's calls (prefills, steps, flag reads, collection) run under
`torch.inference_mode` (`engine_mode`): each of the thousands of small reference-kernel operators
of a step then skips autograd's version counting and view tracking, ~2 ms of a ~60 ms step of
the default model on 2 cores (about 4%). Callbacks run outside it. Not on a GPU: a captured
step replays without those per-operator costs, and graphs are captured outside this loop.
With `config.adaptive_threads` (the CLI's default on a CPU) the decode windows also choose
between torch's N threads and one thread (DecodeThreads); prefills always run with N.

Timing per request (`RequestStats`): `prefill_s` is the prefill call that admitted it (shared with
the requests admitted together), `decode_s` runs from the end of that call to the host check that
collected it, `tokens_per_s` = generated / decode_s, `queued_s` / `finish_s` are its admission
and collection since the call started. Per call (`GenerationOutput.run`): the time in prefills, in
decode windows and on the host, and the steps that drafted.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from samgpu.decoding.adaptive import RefillPolicy, SpeculationPolicy
from samgpu.decoding.config import (
    GenerationConfig,
    GenerationOutput,
    ProgressInfo,
    RequestStats,
    RunStats,
)
from samgpu.decoding.engine import Engine

OnProgress = Callable[[ProgressInfo], None]
OnFinish = Callable[[int, list[int], RequestStats], None]  # (prompt index, tokens, stats)
StopWhen = Callable[[int, list[int]], bool]  # (prompt index, tokens so far) -> end it now


def engine_mode(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """What the scheduler runs the engine's calls under: torch.inference_mode on a CPU, nothing
    elsewhere (module docstring). Tensors an engine call creates there (a drafter's state) are
    inference tensors: read anywhere, updated in place only by later engine calls."""
    return torch.inference_mode if device.type == "cpu" else contextlib.nullcontext


class DecodeThreads:
    """`config.adaptive_threads` on a CPU: each window of decode steps runs with torch's thread
    count at the call's start (N) or with one thread, whichever emitted tokens faster lately,
    learnt per speculation mode by SpeculationPolicy's rule (its True: N threads); N is back after
    each window, so prefills (large matrix products that use every core) and the caller run with
    N. Why: a decode step reads every weight once, and one core can draw as much memory bandwidth
    as all of a small machine's, without waking the others for each operator (2-core VM,
    SmolLM2 float32, OMP_WAIT_POLICY=PASSIVE: one thread vs two, B=1 56 vs 59 ms a step, B=4 82
    vs 95 ms); where more cores add bandwidth, N threads win and stay."""

    def __init__(self, enabled: bool):
        self.full = torch.get_num_threads()
        self.enabled = enabled and self.full > 1
        self.policies = {mode: SpeculationPolicy() for mode in (True, False)}
        self.single_thread_steps = 0

    @contextlib.contextmanager
    def window(self, speculate: bool):
        """The threads of one window; yields True for all N (set back to N on leaving)."""
        if not self.enabled or self.policies[speculate].choose():
            yield True
            return
        torch.set_num_threads(1)
        try:
            yield False
        finally:
            torch.set_num_threads(self.full)

    def record(self, speculate: bool, all_threads: bool, steps: int, *rate) -> None:
        """A finished window (SpeculationPolicy.record's tokens, seconds, clean, live)."""
        if self.enabled:
            self.policies[speculate].record(all_threads, steps, *rate)
        if not all_threads:
            self.single_thread_steps += steps


@dataclass
class _Slot:
    request: int  # prompt index
    start_step: int  # loop step at admission
    prefill_s: float
    decode_start: float  # perf_counter at the end of its admission
    queued_s: float  # from the call's start to its admission
    pending: bool = False  # its prefill runs beside the live slots (overlapped admission)


class Scheduler:
    """Runs prompts through an Engine; see the module docstring."""

    def __init__(self, engine: Engine):
        self.engine = engine
        # on_finish one window late, while the GPU runs the next window's queued steps (None:
        # on CUDA; a CPU's steps have run by then, so there is nothing to hide the calls behind)
        self.defer_finish: bool | None = None

    @property
    def drafter(self):
        return self.engine.drafter

    @property
    def runner(self):
        return self.engine.runner

    @property
    def max_reqs(self) -> int:
        return self.engine.max_reqs

    @property
    def max_len(self) -> int:
        return self.engine.max_len

    def generate(
        self,
        prompts: list[list[int]],
        config: GenerationConfig,
        on_progress: OnProgress | None = None,
        on_finish: OnFinish | None = None,
        stop_when: StopWhen | None = None,
    ) -> GenerationOutput:
        """Generate for every prompt (token ids); outputs in prompt order. `stop_when(prompt
        index, tokens so far)` is asked at every host check of each live request the device did
        not end: True ends it there (stop strings: completions.StopWatch; its output then runs
        past the stop by what the window emitted, for the caller to cut)."""
        prompts = [list(map(int, p)) for p in prompts]
        engine = self.engine
        engine.validate(prompts, config)
        if not prompts:
            return GenerationOutput(tokens=[], stats=[])
        sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
        mode = engine_mode(engine.device)
        t0 = time.perf_counter()
        tokens: list[list[int] | None] = [None] * len(prompts)
        stats: list[RequestStats | None] = [None] * len(prompts)
        waiting = deque(range(len(prompts)))
        width = min(engine.max_reqs, len(prompts))
        engine.configure(config, width)
        slots: list[_Slot | None] = [None] * width
        steps = done_tokens = done_steps = 0
        run = RunStats()
        keys = config.sample_keys or range(len(prompts))
        refill = RefillPolicy()
        threads = DecodeThreads(config.adaptive_threads and engine.device.type == "cpu")
        policy = SpeculationPolicy(
            enabled=config.adapts_speculation(engine.device, width) and engine.can_skip_drafts
        )
        overlap = config.overlaps(engine.device, width)
        overlap = overlap and config.continuous and engine.defers_prefill
        landing = None  # the pending admission's (Engine.begin_prefill)
        launch_s = 0.0  # its launch's host time
        defer = self.defer_finish
        defer = engine.device.type == "cuda" if defer is None else defer
        to_report: deque[tuple[int, list[int], RequestStats]] = deque()  # on_finish not yet called
        in_callback = False

        def is_live(b: int) -> bool:
            return slots[b] is not None and not slots[b].pending

        def is_pending(b: int) -> bool:
            return slots[b] is not None and slots[b].pending

        def admit() -> list[int]:
            """Prefill waiting prompts into free slots; returns the slots filled."""
            nonlocal slots
            free = [b for b, s in enumerate(slots) if s is None]
            if not config.continuous and len(free) < len(slots):
                return []  # static batching: the next batch starts when every slot is free
            if not config.continuous:
                new_width = min(engine.max_reqs, len(waiting))
                if new_width != engine.width:
                    engine.set_width(new_width)
                    slots = [None] * new_width
                free = list(range(new_width))
            rows = free[: len(waiting)]
            if not rows or not refill.should_refill(len(free), len(slots)):
                return []
            if overlap and any(map(is_live, range(len(slots)))):
                launch(rows)
                return []
            requests = [waiting.popleft() for _ in rows]
            sync()
            t_start = time.perf_counter()
            with mode():
                clean = engine.prefill(
                    rows, [prompts[r] for r in requests], [keys[r] for r in requests]
                )
            sync()
            t_end = time.perf_counter()
            run.prefill_s += t_end - t_start
            # a refill's cost: a call that also captured a graph, or one that stalled no live
            # slot (the first admission of a whole batch), is not what the next refill costs
            if clean and len(free) < len(slots):
                refill.record_prefill(t_end - t_start)
            for b, r in zip(rows, requests, strict=True):
                slots[b] = _Slot(r, steps + queued, t_end - t_start, t_end, t_start - t0)
            return rows

        def launch(rows: list[int]) -> None:
            """The first half of an overlapped admission: the prefill beside the next window."""
            nonlocal landing, launch_s
            t_start = time.perf_counter()
            requests = [waiting.popleft() for _ in rows]
            with mode():
                landing = engine.begin_prefill(
                    rows, [prompts[r] for r in requests], [keys[r] for r in requests]
                )
            waiting.extendleft(reversed(requests[landing.count :]))  # (did not fit one call)
            for b, r in zip(rows[: landing.count], requests, strict=False):
                slots[b] = _Slot(r, steps + queued, 0.0, 0.0, t_start - t0, pending=True)
            launch_s = time.perf_counter() - t_start
            run.prefill_s += launch_s

        def land(at_step: int, timed: bool) -> list[int]:
            """The second half: the pending prompts join the batch from loop step `at_step`: at a
            check (`timed`: synced, its time counted as prefill) or mid-window, between queued
            steps (no sync; its host time is inside the window's). Their prefill_s: the
            launch's host time and the landing's (what stalled the others)."""
            if timed:
                sync()
            t_start = time.perf_counter()
            with mode():
                rows = engine.end_prefill()
            if timed:
                sync()
            t_end = time.perf_counter()
            run.prefill_s += (t_end - t_start) if timed else 0.0
            cost = launch_s + t_end - t_start
            refill.record_prefill(cost)
            for b in rows:
                slots[b].pending, slots[b].start_step = False, at_step
                slots[b].prefill_s, slots[b].decode_start = cost, t_end
            return rows

        queued = 0  # steps of the next window queued at the last check (config.steps_ahead)
        # (not with adaptive threads: a window's threads are chosen for all its steps)
        ahead = config.steps_ahead(engine.device) and not threads.enabled

        prefill_mark = 0.0  # run.prefill_s at the window's start (its admissions: not steps)

        def start_window(skip=()) -> tuple[bool, int, float, bool]:
            """A window's mode, live slots (less `skip`), start time and clean flag."""
            nonlocal prefill_mark
            prefill_mark = run.prefill_s
            speculate = policy.choose()
            engine.set_speculate(speculate)
            live = sum(is_live(b) and b not in skip for b in range(len(slots)))
            return speculate, live, time.perf_counter(), True

        def report() -> None:
            """on_finish for the requests collected so far (deferred: beside the queued steps)."""
            nonlocal in_callback
            while to_report:
                item = to_report.popleft()
                in_callback = True
                on_finish(*item)
                in_callback = False

        admit()
        check_every = config.steps_per_check(engine.device, len(slots))
        emitted = 0  # tokens emitted so far: finished requests' and live ones' (at the last check)
        try:
            while any(s is not None for s in slots):
                oldest = min(s.start_step for s in slots if s is not None)
                window = min(check_every, max(1, oldest + config.max_new_tokens - steps))
                if not queued:
                    speculate, live_at_start, t_launch, clean = start_window()
                # an admission running beside this window's steps (launched at the last check):
                # its GPU work falls on whichever mode runs (the policy leaves such windows out)
                beside = landing is not None
                due = refill.landing_step(window - queued) if beside else None
                due = None if due is None else due + queued  # (its prefill follows queued steps)
                free = sum(s is None for s in slots)
                run.slot_steps += window * len(slots)
                if waiting:
                    run.free_waiting_slot_steps += window * free
                else:
                    run.free_drained_slot_steps += window * free
                run.pending_slot_steps += window * sum(is_pending(b) for b in range(len(slots)))
                with threads.window(speculate) as all_threads:
                    with mode():
                        for i in range(queued, window):
                            if i == due:
                                landed = land(steps + i, timed=False)
                                run.pending_slot_steps -= (window - i) * len(landed)
                            clean &= engine.step()
                    report()  # (the last check's finished requests, while the GPU runs the steps)
                    with mode():
                        finished, num_generated = engine.read_flags()
                steps += window
                queued = 0
                t_read = time.perf_counter()
                # the window's time less the admissions made in it (a step queued ahead of them)
                seconds = t_read - t_launch - (run.prefill_s - prefill_mark)
                run.steps_s += seconds
                if clean:
                    refill.record_window(seconds, window)
                if landing is not None and (gpu_s := landing.gpu_seconds()) is not None:
                    refill.record_launch(gpu_s)
                if due is not None:
                    landing = None
                live_now = sum(num_generated[b] for b in range(len(slots)) if is_live(b))
                tokens_in_window = done_tokens + live_now - emitted
                counts = (tokens_in_window, seconds, clean, live_at_start)
                policy.record(speculate, window, *counts, beside=beside)
                threads.record(speculate, all_threads, window, *counts)
                ended = [
                    b
                    for b, s in enumerate(slots)
                    if is_live(b) and (finished[b] or steps - s.start_step >= config.max_new_tokens)
                ]
                if stop_when is not None:  # (a read of the live rows' tokens: only when asked)
                    going = [b for b in range(len(slots)) if is_live(b) and b not in ended]
                    for b, toks in zip(going, engine.read_tokens(going), strict=True):
                        if stop_when(slots[b].request, toks):
                            ended.append(b)
                now = time.perf_counter()
                if host_ended := [b for b in ended if not finished[b]]:
                    with mode():  # (finished before any further step)
                        engine.end_rows(host_ended)
                if ahead and any(is_live(b) and b not in ended for b in range(len(slots))):
                    # the next window's first step, queued now
                    speculate, live_at_start, t_launch, clean = start_window(skip=ended)
                    with mode():
                        clean &= engine.step()
                    queued = 1
                if ended:  # (read as at this check, beside the step queued ahead)
                    with mode():
                        collected = engine.begin_collect(ended, at_check=True)()
                    for b, (toks, stat) in zip(ended, collected, strict=True):
                        slot = slots[b]
                        stat.prefill_s = slot.prefill_s
                        stat.decode_s = now - slot.decode_start
                        stat.queued_s, stat.finish_s = slot.queued_s, now - t0
                        stat.tokens_per_s = stat.generated / stat.decode_s if stat.decode_s else 0.0
                        tokens[slot.request], stats[slot.request] = toks, stat
                        done_tokens += stat.generated
                        done_steps += stat.steps
                        slots[b] = None
                        if on_finish is not None:
                            to_report.append((slot.request, toks, stat))
                    if not defer:
                        report()
                # (the step queued ahead of the rows admitted now ran without them: counted as
                # their state before, pending or free while prompts waited)
                admitted = set()
                if landing is not None:  # (not landed mid-window)
                    admitted.update(land(steps + queued, timed=True))
                    run.pending_slot_steps += queued * len(admitted)
                    landing = None
                if waiting and any(s is None for s in slots):
                    rows = admit()
                    run.free_waiting_slot_steps += queued * len(rows)
                    admitted.update(rows)
                if admitted:  # (new text: drafting's rate is re-measured when it is most of it)
                    policy.admitted(len(admitted), sum(map(is_live, range(len(slots)))))
                # admitted rows start at 0 tokens: no second flag read
                num_generated = [0 if b in admitted else n for b, n in enumerate(num_generated)]
                emitted = done_tokens + sum(
                    num_generated[b] for b in range(len(slots)) if is_live(b)
                )
                if on_progress is not None:
                    live = [b for b in range(len(slots)) if is_live(b)]
                    on_progress(
                        ProgressInfo(
                            request_ids=[slots[b].request for b in live],
                            num_generated=[num_generated[b] for b in live],
                            num_steps=[max(0, steps - slots[b].start_step) for b in live],
                            num_requests=len(prompts),
                            num_finished=sum(t is not None for t in tokens),
                            done_tokens=done_tokens,
                            done_steps=done_steps,
                            steps=steps,
                            elapsed_s=time.perf_counter() - t0,
                            read_tokens=functools.partial(engine.read_tokens, live),
                        )
                    )
        except BaseException:
            # an interrupt or a failure of the loop: the requests already finished are reported
            # (a file run keeps their records); not after a callback of its own failed
            if not in_callback:
                with contextlib.suppress(Exception):
                    report()
            raise
        report()
        run.seconds = time.perf_counter() - t0
        run.host_s = max(0.0, run.seconds - run.prefill_s - run.steps_s)
        run.steps = steps
        run.drafting_steps = policy.steps[True] if engine.can_skip_drafts else 0  # (`ar`: none)
        run.live_slot_steps = done_steps
        idle = run.free_waiting_slot_steps + run.free_drained_slot_steps + run.pending_slot_steps
        run.past_end_slot_steps = run.slot_steps - idle - done_steps
        run.single_thread_steps = threads.single_thread_steps
        run.rates = {("drafting" if k else "plain"): v for k, v in policy.rates.items()}
        return GenerationOutput(tokens=tokens, stats=stats, run=run)
