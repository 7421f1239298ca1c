"""Probe: do two CUDA graphs captured on one stream race when they replay side by side?

torch keeps cuBLAS's workspace per (handle, stream) and a captured graph bakes in the workspace
of its capture stream (samgpu/decoding/streams.py). Two graphs of GEMMs of the decoder's shapes
(a step's: M = B x nodes rows, a prefill's: M = 2,048 packed tokens, both over SmolLM2's
576 -> 1,728 projection and 1,536 -> 576 down projection) are captured either on ONE stream (how
the prefill and step graphs could meet when torch's stream pool wrapped) or on two private
streams (samgpu's capture streams), then replayed `--reps` times at once on two streams; every
replay's outputs are compared with the same graphs replayed alone.

    python -m profiling.probe_workspace_race [--rows 64 320] [--reps 200]

A mismatch count above 0 for "one stream" and 0 for "private streams" shows the race the private
capture streams remove. H200 (2026-12-02): 0 either way at 64 and 320 rows, 200 replays.
Results: a table and profiling/results/<day>-<card>-<sha>.jsonl (bench "probe_workspace_race").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from profiling.common import hardware_line, print_table, write_jsonl
from samgpu.decoding.streams import private_stream


def gemms(rows: int, dev) -> tuple[list[torch.Tensor], Callable[[], None]]:
    """Buffers and a function running a projection chain on `rows` rows (bf16)."""
    g = torch.Generator(device=dev).manual_seed(rows)
    x = torch.randn(rows, 576, device=dev, dtype=torch.bfloat16, generator=g)
    w1 = torch.randn(1728, 576, device=dev, dtype=torch.bfloat16, generator=g) / 24
    w2 = torch.randn(576, 1536, device=dev, dtype=torch.bfloat16, generator=g) / 40
    h = torch.empty(rows, 1728, device=dev, dtype=torch.bfloat16)
    out = torch.empty(rows, 576, device=dev, dtype=torch.bfloat16)

    def run():
        for _ in range(8):  # (a layer stack's worth of launches)
            torch.mm(x, w1.t(), out=h)
            torch.mm(h[:, :1536], w2.t(), out=out)

    return [out], run


def capture(run, stream) -> torch.cuda.CUDAGraph:
    run()  # (warm-up outside the capture)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        run()
    return graph


def trial(step_rows: int, prefill_rows: int, streams: tuple, reps: int) -> int:
    dev = torch.device("cuda")
    (step_out,), step_run = gemms(step_rows, dev)
    (pre_out,), pre_run = gemms(prefill_rows, dev)
    step_graph, pre_graph = capture(step_run, streams[0]), capture(pre_run, streams[1])
    step_graph.replay()
    pre_graph.replay()
    torch.cuda.synchronize()
    want_step, want_pre = step_out.clone(), pre_out.clone()
    a, b = torch.cuda.Stream(), torch.cuda.Stream()
    bad = 0
    for _ in range(reps):
        with torch.cuda.stream(a):
            step_graph.replay()
        with torch.cuda.stream(b):
            pre_graph.replay()
        torch.cuda.synchronize()
        bad += int(not torch.equal(step_out, want_step)) + int(not torch.equal(pre_out, want_pre))
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 320], help="step GEMM rows")
    ap.add_argument("--prefill-rows", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("this probe needs a CUDA device (it replays CUDA graphs of cuBLAS GEMMs)")
    print(hardware_line())
    shared = torch.cuda.Stream()
    private = (private_stream("cuda", "probe: step"), private_stream("cuda", "probe: prefill"))
    records = []
    for rows in args.rows:
        for name, streams in (("one stream", (shared, shared)), ("private streams", private)):
            bad = trial(rows, args.prefill_rows, streams, args.reps)
            records.append(
                dict(
                    bench="probe_workspace_race",
                    step_rows=rows,
                    prefill_rows=args.prefill_rows,
                    capture=name,
                    reps=args.reps,
                    mismatches=bad,
                )
            )
            print(records[-1], flush=True)
    print_table(records, ["step_rows", "prefill_rows", "capture", "reps", "mismatches"])
    print(f"results: {write_jsonl(records)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
