"""Where the decode loop's host time goes, as users run it: `profiling.bench_serve` (the CLI path:
same factory, scheduler and writer as `samgpu generate`) with the engine's and the file writer's
calls timed by the wall clock, for the last pass of each configuration.

    python -m profiling.host_time --batch-sizes 64 256 --methods ar,merged --modes continuous

Every bench_serve option passes through (it writes its own "serve" records as well). Timed:
`Engine.read_flags` (where the loop waits for the GPU: the rest of a window is queued by then),
`step` (the host time to queue one), the admissions (`prefill`, `begin_prefill`, `end_prefill`),
`begin_collect` (queueing the finished rows' read), the CLI's record writing (`_output_record`:
detokenize; `OutputWriter.add`: JSON and write), against the whole `Scheduler.generate` call.
What the GPU does meanwhile is not seen here (`profiling.profile_step` for a step's kernels).
Results: bench "host_time" (ms and calls per timed function) in profiling/results; a table.
Measured with it (H200, B=256 `ar`, 2026-11-30): record writing 0.22 s and a pin_memory() per
upload (~1 ms each, 6 per admission) of a 2.8 s run while the GPU waited; both since moved off the
loop's critical path (README, Results).
"""

from __future__ import annotations

import functools
import sys
import time
from collections import defaultdict

from profiling import bench_serve
from profiling.common import print_table, write_jsonl

TIMED = {
    "samgpu.decoding.engine:Engine": (
        "read_flags",
        "step",
        "prefill",
        "begin_prefill",
        "end_prefill",
        "begin_collect",
    ),
    "samgpu.cli.file": ("_output_record",),
    "samgpu.io:OutputWriter": ("add",),
}


class Timers:
    """Wall-clock totals and calls per patched function, reset at each Scheduler.generate."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.generate_s = 0.0
        self._saved: list[tuple[object, str, object]] = []  # (owner, name, original)

    def wrap(self, owner, name: str, label: str) -> None:
        fn = getattr(owner, name)
        self._saved.append((owner, name, fn))

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t
                self.calls[label] += 1

        setattr(owner, name, timed)

    def install(self) -> None:
        import importlib

        from samgpu.decoding.scheduler import Scheduler

        for target, names in TIMED.items():
            module, _, attr = target.partition(":")
            owner = importlib.import_module(module)
            owner = getattr(owner, attr) if attr else owner
            for name in names:
                self.wrap(owner, name, f"{attr or module.rsplit('.', 1)[1]}.{name}")
        generate = Scheduler.generate
        self._saved.append((Scheduler, "generate", generate))

        def timed_generate(scheduler, *args, **kwargs):
            self.seconds.clear()
            self.calls.clear()
            t = time.perf_counter()
            try:
                return generate(scheduler, *args, **kwargs)
            finally:
                self.generate_s = time.perf_counter() - t

        Scheduler.generate = timed_generate

    def uninstall(self) -> None:
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)
        self._saved.clear()


def main(argv: list[str] | None = None) -> int:
    timers = Timers()
    timers.install()
    last: dict[tuple, dict] = {}  # (batch, method, mode) -> the last pass's timings
    run_cli = bench_serve.run_cli

    def timed_run_cli(src, out, args, method, batch, mode):
        result = run_cli(src, out, args, method, batch, mode)
        last[(batch, method, mode)] = dict(
            generate_ms=1e3 * timers.generate_s,
            calls={k: [1e3 * v, timers.calls[k]] for k, v in timers.seconds.items()},
        )
        return result

    bench_serve.run_cli = timed_run_cli
    try:
        code = bench_serve.main(argv)
    finally:
        bench_serve.run_cli = run_cli
        timers.uninstall()
    records, rows = [], []
    for (batch, method, mode), t in last.items():
        params = dict(argv=list(sys.argv[1:] if argv is None else argv))
        rec = dict(bench="host_time", provider="samgpu-cli", method=method, batch_size=batch)
        records.append(dict(rec, mode=mode, **t, params=params))
        row = dict(batch_size=batch, method=method, mode=mode, generate_ms=t["generate_ms"])
        row.update({k: f"{ms:.1f} / {n}" for k, (ms, n) in t["calls"].items()})
        rows.append(row)
    if records:
        path = write_jsonl(records)
        labels = sorted({k for r in records for k in r["calls"]})
        print_table(
            rows,
            ["batch_size", "method", "mode", "generate_ms", *labels],
            title="host time: ms / calls in the last pass's generate call",
        )
        print(f"results: {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
