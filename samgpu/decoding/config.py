"""What a decode call takes and gives: GenerationConfig in; GenerationOutput (tokens and
RequestStats per prompt) out; ProgressInfo to the progress callback at every host check. The
scheduler (samgpu.decoding.scheduler) documents how they are produced."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

MAX_EOS: int = 16  # EOS ids per generate call (fixed buffer: the CUDA graphs do not depend on it)
SPECULATION_MODES: tuple[str, ...] = ("adaptive", "always")
CHECK_EVERY: int = 8  # default steps between host checks
CHECK_EVERY_ONE_GPU: int = 4  # one sequence on a GPU (steps_per_check)
# Overlapped admissions by default from this batch width, for every method (H200, SmolLM2,
# bench_serve, same-session arms with step_ahead on, 4cc867f: `merged` +4% / -0.3% at B=16 and
# +5% / +4% / +7% at B=64 with them; `ar` +3% at B=16, +6% at B=64 (1466161). Without step_ahead
# `merged` lost 1-5% with them at B=16-64: its landing's drafter.start then ran while no step was
# queued.)
OVERLAP_MIN_SLOTS: int = 16


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy; > 0: sampling (verify_sample)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    eos_token_ids: tuple[int, ...] = ()
    seed: int | None = None  # sampling seed; None: a fresh one per call
    # Sampling: each prompt's key in the noise its tokens are drawn from (kernels/randoms.py):
    # the same (seed, key, prompt) gives the same tokens with any method, batch size or decoder.
    # None: the prompt's index in the call. A file run passes its records' indices.
    sample_keys: tuple[int, ...] | None = None
    # steps between host reads of the finished flags; None: CHECK_EVERY (a read is a sync on a
    # GPU), except for a single sequence: 1 on a CPU, 4 on a GPU (see steps_per_check)
    check_every: int | None = None
    # Continuous batching: a finished request's slot takes the next waiting prompt (at the next
    # host check) instead of idling until the batch's longest request ends.
    continuous: bool = False
    # "adaptive": per window of check_every steps, draft or run plain AR steps, whichever emitted
    # tokens faster lately (samgpu.decoding.adaptive), except one sequence on a GPU, which always
    # drafts (see adapts_speculation); "always": every step drafts.
    speculation: str = "adaptive"
    # On a CPU: each window of decode steps runs with torch's threads or with one, whichever
    # emitted tokens faster lately (samgpu.decoding.scheduler.DecodeThreads); prefills keep them
    # all. Off by default (torch's thread count is global to the process); the CLI turns it on
    # when it chooses the threads itself (no --threads, no OMP_NUM_THREADS).
    adaptive_threads: bool = False
    # Continuous batching: a refill beside live slots is prefilled on a second stream during their
    # next steps and joins them when its prefill should be done, instead of stalling them for it
    # (samgpu.decoding.scheduler). None: on CUDA from OVERLAP_MIN_SLOTS slots; True also on a
    # CPU (tests).
    overlap_admissions: bool | None = None
    # At a host check, the next window's first step is queued before the check's host work
    # (collection, admission), which then runs while the GPU steps; new requests join one step
    # later, and progress's read_tokens may show that step's tokens. None: on CUDA (H200, 4cc867f,
    # same-session arms: `ar` +0.4% / +6% / +9% at B=16 / 64 / 256, `merged` -0.6% / +1% / +6%;
    # a CPU's steps have run by the check, there is nothing to hide the host work behind). Not
    # with adaptive_threads (a window's threads are chosen for all its steps).
    step_ahead: bool | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature={self.temperature} must be a finite number >= 0")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables top-k)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 disables top-p)")
        if self.check_every is not None and self.check_every < 1:
            raise ValueError(f"check_every={self.check_every} must be >= 1")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            raise ValueError(f"seed={self.seed} must fit in 64 bits (-2**63 <= seed < 2**63)")
        if self.sample_keys is not None and not all(
            isinstance(k, int) and -(2**63) <= k < 2**63 for k in self.sample_keys
        ):
            raise ValueError("sample_keys must be ints that fit in 64 bits")
        if self.speculation not in SPECULATION_MODES:
            raise ValueError(
                f"speculation={self.speculation!r}: expected one of {', '.join(SPECULATION_MODES)}"
            )
        if not (self.overlap_admissions is None or isinstance(self.overlap_admissions, bool)):
            raise ValueError(
                f"overlap_admissions={self.overlap_admissions!r}: expected None (auto), True or"
                " False"
            )
        if not (self.step_ahead is None or isinstance(self.step_ahead, bool)):
            raise ValueError(f"step_ahead={self.step_ahead!r}: expected None (auto), True or False")
        if len(self.eos_token_ids) > MAX_EOS:
            raise ValueError(f"at most {MAX_EOS} eos_token_ids, got {len(self.eos_token_ids)}")

    @property
    def is_sampling(self) -> bool:
        return self.temperature > 0

    @property
    def graph_mode(self) -> tuple:
        """What a captured step depends on besides its width and drafting: the sampling mode."""
        return (self.is_sampling, self.temperature, self.top_k, self.top_p)

    def check_prompts(
        self, prompts: list[list[int]], *, vocab_size: int, max_len: int, num_nodes: int
    ) -> None:
        """Host checks of a call's prompts for an engine of `max_len` tokens per slot drafting
        `num_nodes`: non-empty, ids in the vocabulary, prompt + max_new_tokens + draft nodes
        within max_len; EOS ids in range."""
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
            lo, hi = min(p), max(p)
            if lo < 0 or hi >= vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"prompt {i} has token id {bad} outside the vocabulary [0, {vocab_size})"
                )
            need = len(p) + self.max_new_tokens + num_nodes
            if need > max_len:
                raise ValueError(
                    f"prompt {i}: {len(p)} prompt tokens + max_new_tokens {self.max_new_tokens}"
                    f" + {num_nodes} draft nodes = {need} exceeds max_len={max_len}; "
                    "shorten the prompt, lower max_new_tokens or build the decoder with a larger "
                    "max_len"
                )
        if self.sample_keys is not None and len(self.sample_keys) != len(prompts):
            raise ValueError(
                f"{len(self.sample_keys)} sample_keys for {len(prompts)} prompts: one key a prompt"
            )
        for t in self.eos_token_ids:
            if not 0 <= t < vocab_size:
                raise ValueError(f"eos token id {t} outside the vocabulary [0, {vocab_size})")

    def adapts_speculation(self, device: torch.device, width: int) -> bool:
        """Whether windows may run plain steps: speculation "adaptive", but not for one sequence on
        a GPU. There a drafting step costs ~1.2x a plain one whatever it accepts, so a stretch of
        text that drafts poorly loses little while the policy's plain windows, chosen on the text
        before, missed the stretches that draft well: Spec-Bench at B=1 on an H200, drafting every
        step against adaptive, `merged` 2.83x vs 2.69x `ar`, `pld` 2.29x vs 2.19x,
        `merged+eagle` 2.10x vs 2.06x (2026-12-01, profiling/results/20261201-h200-policy3-*)."""
        return self.speculation == "adaptive" and not (device.type == "cuda" and width == 1)

    def steps_per_check(self, device: torch.device, width: int) -> int:
        """check_every, or its default for `width` slots on `device`: CHECK_EVERY, but for one
        sequence 1 on a CPU, where a read costs nothing and each step past EOS before the next
        read is a whole wasted forward (up to 7 of ~60 ms on 2 cores), and 4 on a GPU (H200,
        SmolLM2, 48 prompts: `merged` 2,494 -> 2,578-2,610 tok/s, `pld` 2,006 -> 2,095, `ar`
        990 -> 1,001: a drafting request ends ~35 steps after its start, so 3.5 steps past its
        end were ~10% of them). Not for wider CPU batches: 1-step windows cost a refill more
        often (B=4: 0.94x transformers, from 1.04x, under the refill rule of then)."""
        if self.check_every is not None:
            return self.check_every
        if width == 1:
            return 1 if device.type == "cpu" else CHECK_EVERY_ONE_GPU
        return CHECK_EVERY

    def overlaps(self, device: torch.device, width: int) -> bool:
        """overlap_admissions, or its default for `width` slots on `device`: on CUDA from
        OVERLAP_MIN_SLOTS."""
        if self.overlap_admissions is not None:
            return self.overlap_admissions
        return device.type == "cuda" and width >= OVERLAP_MIN_SLOTS

    def steps_ahead(self, device: torch.device) -> bool:
        """step_ahead, or its default on `device`: on CUDA."""
        return device.type == "cuda" if self.step_ahead is None else self.step_ahead


@dataclass
class RequestStats:
    steps: int  # decode steps while the request was live
    generated: int  # tokens emitted (EOS included)
    mat: float  # tokens emitted per step, bonus included (generated / steps; the last step may be
    # cut by EOS / max_new_tokens, so this is at most the mean of num_accepted + 1)
    tokens_per_s: float  # generated / decode_s
    accepted_hist: list[int]  # accepted_hist[a]: steps that accepted a draft tokens (before cuts)
    sources: dict[str, int]  # steps per draft source (drafters with `last_source`), else {}
    prefill_s: float  # the prefill that admitted it (shared with the requests admitted with it)
    decode_s: float  # from its admission's end to the host check that collected it
    queued_s: float = 0.0  # from the call's start to its admission
    finish_s: float = 0.0  # from the call's start to its collection (its latency in the call)


@dataclass
class ProgressInfo:
    """Passed to `on_progress` at every host check (every `check_every` steps).

    Live requests are listed in slot order. `tokens` (generated so far, per live request) is read
    from the GPU only when a callback asks for it, and only during the callback: the next steps
    run after it returns."""

    request_ids: list[int]  # prompt indices of the live requests
    num_generated: list[int]  # tokens so far, per live request
    num_steps: list[int]  # steps so far, per live request
    num_requests: int  # prompts in this call
    num_finished: int  # requests finished in this call so far
    done_tokens: int  # tokens of the finished requests
    done_steps: int  # steps of the finished requests
    steps: int  # loop steps so far
    elapsed_s: float  # since generate() started
    read_tokens: Callable[[], list[list[int]]] | None = field(default=None, repr=False)

    @functools.cached_property
    def tokens(self) -> list[list[int]] | None:
        return self.read_tokens() if self.read_tokens is not None else None


@dataclass
class RunStats:
    """Where a generate call's time went, and how it speculated."""

    seconds: float = 0.0  # the whole call
    prefill_s: float = 0.0  # admissions: prompts into slots (runner prefill, drafter start)
    # decode windows: first launch to flag read (the GPU's steps), less the admissions made
    # inside a window (step_ahead: they follow its first step)
    steps_s: float = 0.0
    host_s: float = 0.0  # the rest: collection, callbacks, output records
    steps: int = 0  # loop steps
    drafting_steps: int = 0  # of which drafted (the others: plain AR steps; none for `ar`)
    single_thread_steps: int = 0  # of which ran with one thread (adaptive_threads, CPU)
    rates: dict[str, float] = field(default_factory=dict)  # "drafting" / "plain" tokens/s
    # Slot-steps (a slot through one loop step) by what the slot was doing, counted per window
    # from its state at the window's start: `slot_steps` all of them (steps x slots); idle ones
    # `free_waiting_slot_steps` (free while prompts waited: a refill not yet made, or a static
    # batch draining), `free_drained_slot_steps` (free with no prompt left), `pending_slot_steps`
    # (an overlapped admission's prefill, until it landed); `live_slot_steps` the requests' own
    # steps (RequestStats.steps summed); `past_end_slot_steps` the rest: a request run past its
    # end until the host check that collected it.
    slot_steps: int = 0
    free_waiting_slot_steps: int = 0
    free_drained_slot_steps: int = 0
    pending_slot_steps: int = 0
    live_slot_steps: int = 0
    past_end_slot_steps: int = 0


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # generated tokens per prompt, EOS included when produced
    stats: list[RequestStats] = field(default_factory=list)
    run: RunStats = field(default_factory=RunStats)
