"""What a file run tells as it goes and at the end: the progress display (Progress) and the
--stats-json totals (RunTotals, write_stats)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class Progress:
    """Progress of a file run on rank 0: records done, tokens/s and mean accepted tokens per step
    (MAT). On a terminal, a tqdm bar; when stderr is a file or a pipe, a plain line every
    LOG_EVERY_S seconds instead of a bar's carriage-return redraws (the run's summary line then
    ends the log, once)."""

    LOG_EVERY_S = 30.0

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.total = total
        self.enabled = enabled and bool(total)
        self.is_tty = sys.stderr.isatty()
        if self.enabled and self.is_tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="req", dynamic_ncols=True, file=sys.stderr)
        self.t0 = time.perf_counter()
        self.last_log = self.t0
        self.records = 0
        self.tokens = 0  # tokens of finished rounds
        self.steps = 0.0  # decode steps of finished rounds, summed over requests
        self.call_tokens = 0  # the running round so far (finished and live requests)
        self.call_steps = 0.0

    def on_step(self, info: Any) -> None:
        """ProgressInfo of the running generate call."""
        self.call_tokens = info.done_tokens + sum(info.num_generated)
        self.call_steps = float(info.done_steps + sum(info.num_steps))
        self._postfix()

    def records_done(self, num_records: int) -> None:
        self.records += num_records
        if self.bar is not None and num_records:
            self.bar.update(num_records)

    def round_done(self, tokens: int, steps: float) -> None:
        self.tokens += tokens
        self.steps += steps
        self.call_tokens, self.call_steps = 0, 0.0
        self._postfix()

    def rates(self) -> str:
        """'123 tok/s, MAT 2.41' so far (MAT: tokens per step, summed over requests; >= 1 since
        every live request emits at least one token per step)."""
        tokens = self.tokens + self.call_tokens
        steps = self.steps + self.call_steps
        text = f"{tokens / max(time.perf_counter() - self.t0, 1e-9):.3g} tok/s"
        return text + (f", MAT {tokens / steps:.2f}" if steps else "")

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.rates(), refresh=True)
        elif self.enabled and time.perf_counter() - self.last_log >= self.LOG_EVERY_S:
            self.last_log = time.perf_counter()
            print(f"samgpu: {self.records}/{self.total} records, {self.rates()}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunTotals:
    """The scheduler's RunStats summed over a rank's generate calls (--stats-json "timing")."""

    def __init__(self):
        from dataclasses import fields

        from samgpu.decoding.config import RunStats  # (torch: not at the CLI's import)

        self.prefill_s = self.steps_s = self.host_s = 0.0
        self.steps = self.drafting_steps = self.single_thread_steps = 0
        # RunStats' slot accounting, field by field
        self.slots = {f.name: 0 for f in fields(RunStats) if f.name.endswith("slot_steps")}

    def add(self, run) -> None:
        self.prefill_s += run.prefill_s
        self.steps_s += run.steps_s
        self.host_s += run.host_s
        self.steps += run.steps
        self.drafting_steps += run.drafting_steps
        self.single_thread_steps += run.single_thread_steps
        for name in self.slots:
            self.slots[name] += getattr(run, name)


def is_stats_file(path: Path) -> bool:
    """An earlier run's --stats-json (which a rerun may replace), by its keys."""
    try:
        if path.stat().st_size > 1 << 20:
            return False
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stats, dict) and {"records", "new_tokens", "tokens_per_second"} <= set(stats)


def write_stats(
    args,
    info,
    session,
    timing,
    num_records,
    num_new,
    tokens,
    steps,
    seconds,
    rank_busy,
    rounds,
    num_skipped=0,
) -> None:
    """--stats-json: the totals; generation time counts from after warm-up to the last write.
    rank_generate_seconds: time each rank spent inside generate; the rest of a rank's share of
    generate_seconds is waiting for the other ranks (each round ends with a gather) and writing.
    timing (rank 0's own): seconds in prefills, in decode windows and on the host, loop steps and
    how many drafted (the others were plain AR steps of adaptive speculation) and how many ran
    with one CPU thread (adaptive threads); slot_steps (rank 0's too): RunStats' slot accounting
    (all, free while prompts waited, free with none left, pending admissions, the requests' own,
    past their end until a check: the last five add up to the first)."""
    import torch

    stats = {
        "records": num_records,
        "new_records": num_new,
        "skipped_records": num_skipped,  # (empty or too long: their records have an error)
        "new_tokens": int(tokens),
        "generate_seconds": round(seconds, 4),
        "tokens_per_second": round(tokens / max(seconds, 1e-9), 2),
        "mean_accepted_tokens": round(tokens / steps, 4) if steps else None,
        "load_seconds": round(session.load_seconds, 3),
        "world_size": info.world_size,
        "rounds": rounds,
        "rank_generate_seconds": [round(b, 4) for b in rank_busy],
        "timing": {
            "prefill_s": round(timing.prefill_s, 4),
            "steps_s": round(timing.steps_s, 4),
            "host_s": round(timing.host_s, 4),
        },
        "steps": timing.steps,
        "drafting_steps": timing.drafting_steps,
        "single_thread_steps": timing.single_thread_steps,
        "slot_steps": timing.slots,
        "batch_size": args.batch_size,
        "method": args.method,
        "max_new_tokens": args.max_new_tokens,
        "device": torch.cuda.get_device_name() if session.device.type == "cuda" else "cpu",
    }
    path = Path(args.stats_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats, indent=1) + "\n")
