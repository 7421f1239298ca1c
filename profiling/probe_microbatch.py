"""Probe: does a decode step's forward run faster split into micro-batches on parallel streams?

At B <= 256 the default model's step is latency-bound (~270 small kernels, most using a few of
the GPU's SMs), so two or four independent row groups captured as parallel branches of one CUDA
graph may overlap their kernels. This times the runner's `forward_tree` (random SmolLM2 weights,
context `--context`, N nodes a row) captured once over all B rows against the same rows split
into S groups on S streams (the runner's row groups, `force_row_groups`).

    python -m profiling.probe_microbatch [--batch 16 64 256] [--nodes 1 5] [--splits 1 2 4]

Results: a table and profiling/results/<day>-<card>-<sha>.jsonl (bench "probe_microbatch").
"""

from __future__ import annotations

import argparse

import torch

from profiling.common import (
    hardware_line,
    print_table,
    random_model,
    smollm2_135m_config,
    write_jsonl,
)
from samgpu.decoding.runners import make_runner


def capture(runner, cache, b, n, groups, vocab):
    """The runner's forward_tree over b rows of n nodes in `groups` row groups, as a CUDA graph."""
    dev = cache.k.device
    tokens = torch.randint(0, vocab, (b, n), device=dev)
    positions = cache.cache_len[:b, None].long() + torch.arange(n, device=dev)
    mask = torch.ones(n, n, device=dev, dtype=torch.bool).tril().expand(b, n, n).contiguous()
    out = torch.empty(b, n, vocab, device=dev, dtype=torch.bfloat16)
    runner.force_row_groups = groups

    def forward():
        runner.forward_tree(tokens, positions, mask, cache, out)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    runner.force_row_groups = None
    return graph, out


def time_graph(graph, reps: int) -> float:
    for _ in range(10):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 5])
    p.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--reps", type=int, default=200)
    args = p.parse_args(argv)
    print(hardware_line())
    torch.manual_seed(0)
    config = smollm2_135m_config()
    runner = make_runner(random_model(config, "cuda", torch.bfloat16))
    records = []
    for b in args.batch:
        cache = runner.allocate_cache(b, args.context + 64)
        cache.k.normal_()
        cache.v.normal_()
        cache.cache_len.fill_(args.context)
        for n in args.nodes:
            base = None
            for s in args.splits:
                if b % s:
                    continue
                graph, out = capture(runner, cache, b, n, s, config.vocab_size)
                ms = time_graph(graph, args.reps)
                if s == 1:
                    base = (ms, out.clone())
                same = bool(torch.equal(out, base[1])) if base else None
                records.append(
                    {
                        "bench": "probe_microbatch",
                        "batch": b,
                        "nodes": n,
                        "splits": s,
                        "context": args.context,
                        "ms": round(ms, 4),
                        "vs_one": round(base[0] / ms, 3) if base else None,
                        "same_logits": same,
                    }
                )
                del graph
    print_table(records, ["batch", "nodes", "splits", "ms", "vs_one", "same_logits"])
    write_jsonl(records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
