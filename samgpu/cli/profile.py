"""`--profile DIR`: torch.profiler around a run's first host-check windows, with each decode-step
stage as a named range.

The decode loop names every stage of a step (`samgpu.decoding.stages`); `profiled_range`, passed
to the decoder as its stage_range, opens both an NVTX range (Nsight) and a torch.profiler range
`samgpu.<stage>` for each. `profiler(args, suffix)` traces the first `--profile-windows` windows of
`--check-every` steps (the first one includes prefill and warm-up) and writes
`DIR/trace<suffix>.json.gz` (Perfetto and chrome://tracing open it as it is) and
`DIR/summary<suffix>.txt` (operators by total time). Example: `--profile prof/` on one prompt ->
prof/trace.json.gz of about 1-2 MB per window on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any


class _Profile:
    """torch.profiler over the first `windows` host-check windows of a run: `step()` (called at
    each host check) advances the schedule; when the windows are done (or the run ends) the trace
    is written gzipped (Perfetto and chrome://tracing open .json.gz) with the operator summary.
    A CPU step runs thousands of small reference-kernel ops, ~4 MB of trace each, hence the cap.
    Kineto's own start/stop lines (USDT:, gpuGetDeviceCount) are kept off stderr."""

    def __init__(self, args: argparse.Namespace, rank_suffix: str):
        import torch
        from torch.profiler import ProfilerActivity, profile, schedule

        self.out_dir = Path(args.profile)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.suffix = rank_suffix
        self.activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            self.activities.append(ProfilerActivity.CUDA)
        self.written: Path | None = None
        with warnings.catch_warnings():  # "won't be using warmup": the first window is the warm-up
            warnings.simplefilter("ignore")
            self.prof = profile(
                activities=self.activities,
                record_shapes=False,
                schedule=schedule(wait=0, warmup=0, active=args.profile_windows, repeat=1),
                on_trace_ready=self._write,
            )

    def _write(self, prof) -> None:
        from torch.profiler import ProfilerActivity

        trace = self.out_dir / f"trace{self.suffix}.json.gz"
        prof.export_chrome_trace(str(trace))
        sort = "cuda_time_total" if ProfilerActivity.CUDA in self.activities else "cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=40)
        (self.out_dir / f"summary{self.suffix}.txt").write_text(table + "\n")
        self.written = trace

    def step(self, info: Any = None) -> None:
        with _quiet_stderr():
            self.prof.step()

    def __enter__(self) -> _Profile:
        with _quiet_stderr():
            self.prof.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with _quiet_stderr():
            self.prof.stop()

    def report(self) -> None:
        """The line naming the trace (after the run's own output, not inside a stream)."""
        if self.written is not None:
            print(
                f"samgpu: profiler trace written to {self.written} (open in ui.perfetto.dev)",
                file=sys.stderr,
            )


class _NoProfile:
    def step(self, info: Any = None) -> None:
        pass

    def report(self) -> None:
        pass

    def __enter__(self) -> _NoProfile:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the duration (C++ libraries print there directly)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profiler(args: argparse.Namespace, rank_suffix: str):
    """--profile: a context manager whose `step(info)` is called at each host check (pass it as,
    or chain it into, on_progress); without --profile, one that does nothing."""
    if not args.profile:
        return _NoProfile()
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    return _Profile(args, rank_suffix)


def chain(*callbacks):
    """One on_progress callback calling each of `callbacks` (None entries skipped)."""
    fns = [f for f in callbacks if f is not None]

    def call(info: Any) -> None:
        for f in fns:
            f(info)

    return call


@contextlib.contextmanager
def profiled_range(name: str):
    """A decode-step stage as an NVTX range (Nsight) and a torch.profiler range `samgpu.<stage>`
    (the --profile trace), passed to the decoder as its stage_range."""
    from torch.profiler import record_function

    from samgpu.decoding.stages import nvtx_range

    with nvtx_range(name), record_function(f"samgpu.{name}"):
        yield
