"""How much of an admission's prefill is padding, and what an admission costs: the prompts of
bench_serve's mixed file, refill groups of k prompts drawn at random, each group planned as the
engine plans it, padded calls (`plan_calls`, rows bucket x width bucket per call) and packed calls
(`plan_packs`, one row of `pack_bucket` tokens per call), against the prompts' real tokens.

    python -m profiling.prefill_padding [--groups 1 2 4 8 16] [--draws 300]   # CPU, no model run
    python -m profiling.prefill_padding --time [--draws 30]                    # + GPU timing

A graph call computes every padded token (the GEMMs run over rows x width), so padded / real is
the factor by which an admission's linear layers exceed the work of its prompts; `calls` is the
mean number of calls per admission (each costs a fixed ~1.2 ms of launches on an H200:
profile_step's prefill times at 128..2,048 tokens fit 1.19 ms + 0.85 us per padded token).
`--time` (CUDA): the default model in bfloat16, a decoder of `--rows` slots from build_decoder
(`ar`; packed prefill, the default on CUDA), each group admitted with `engine.prefill` and timed
from a synchronised start to the end of its GPU work (median ms); the padded arm is the same
engine with its Prefiller rebuilt with pack=False (a study arm, not a user path), graphs warmed.
Prints a table; JSON records via write_jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

from profiling.bench_serve import write_prompts
from profiling.common import env, hardware_line, print_table, write_jsonl


def prompt_lengths(tokenizer, limit: int) -> list[int]:
    """Prefilled tokens (prompt[:-1]) of the first `limit` prompts of bench_serve's file."""
    from samgpu.api import encode_chat

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompts.jsonl"
        write_prompts(path, limit)
        with open(path) as f:
            return [len(encode_chat(tokenizer, json.loads(line)["messages"])) - 1 for line in f]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.prefill_padding", description=__doc__)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--draws", type=int, default=300, help="random groups per size")
    ap.add_argument("--limit", type=int, default=600, help="prompts of the mixed file")
    ap.add_argument("--rows", type=int, default=16, help="prompts per graph call at most")
    ap.add_argument("--max-len", type=int, default=4096, help="the cache's tokens per slot")
    ap.add_argument("--time", action="store_true", help="also time admissions on the GPU")
    args = ap.parse_args(argv)
    if args.time and not torch.cuda.is_available():
        ap.error("--time needs a CUDA GPU")
    if min(args.groups) < 1 or args.draws < 1:
        ap.error(f"--groups and --draws must be >= 1, got {args.groups} and {args.draws}")

    from samgpu import resolve
    from samgpu.decoding.prefill_plan import (
        call_bucket,
        pack_bucket,
        pack_capacity,
        plan_calls,
        plan_packs,
    )

    lengths = prompt_lengths(resolve.load_tokenizer("default"), args.limit)
    if max(args.groups) > len(lengths):
        ap.error(f"--groups: at most {len(lengths)} prompts (--limit), got {max(args.groups)}")
    capacity = pack_capacity(args.rows, args.max_len)
    rng = random.Random(0)
    rows, records, draws = [], [], {}
    for k in args.groups:
        real = padded = packed = calls = packs = 0
        draws[k] = [rng.sample(lengths, k) for _ in range(args.draws)]
        for group in draws[k]:
            plan = plan_calls(group, args.rows, args.max_len)
            for call in plan:
                r, w = call_bucket(len(call), max(group[i] for i in call), args.rows, args.max_len)
                real += sum(group[i] for i in call)
                padded += r * w
            calls += len(plan)
            for call in plan_packs(group, capacity):
                packed += pack_bucket(sum(group[i] for i in call), capacity)
                packs += 1
        row = dict(group=k, real_tokens=real / args.draws, padded_over_real=padded / real)
        row.update(packed_over_real=packed / real, calls=calls / args.draws)
        row["packed_calls"] = packs / args.draws
        rows.append(row)
    if args.time:
        for row, times in zip(rows, time_admissions(args, draws), strict=True):
            row.update(times)
    for row in rows:
        records.append(dict(bench="prefill_padding", prompts=len(lengths), **row))
    mean = sum(lengths) / len(lengths)
    title = f"prefill padding: {len(lengths)} prompts, mean {mean:.0f} / max {max(lengths)} tokens"
    columns = ["group", "real_tokens", "padded_over_real", "packed_over_real", "calls"]
    columns += ["packed_calls"] + (["padded_ms", "packed_ms"] if args.time else [])
    print_table(rows, columns, title=title)
    print(hardware_line(env()))
    print(f"wrote {write_jsonl(records)}")
    return 0


def time_admissions(args, draws: dict[int, list[list[int]]]) -> list[dict]:
    """Median admission ms per group size, padded then packed, on one engine (see the docstring)."""
    import statistics
    import time

    from samgpu import api
    from samgpu.decoding.config import GenerationConfig
    from samgpu.decoding.prefill import Prefiller
    from samgpu.factory import build_decoder

    dev = torch.device("cuda")
    model, _ = api.load_model("default", dev, torch.bfloat16)
    decoder = build_decoder(model, "ar", batch_size=args.rows, max_len=args.max_len)
    engine = decoder.engine
    engine.warm_up(args.rows)
    engine.configure(GenerationConfig(max_new_tokens=8), args.rows)
    packed = engine._prefiller
    padded = Prefiller(engine.runner, engine.cache, use_graphs=packed.use_graphs, pack=False)
    padded.warm_up()
    gen = torch.Generator().manual_seed(0)
    out = []
    for groups in draws.values():
        prompts = [
            [torch.randint(3, 1000, (n + 1,), generator=gen).tolist() for n in group]
            for group in groups
        ]
        row = {}
        for name, prefiller in (("padded_ms", padded), ("packed_ms", packed)):
            engine._prefiller = prefiller
            ms = []
            for group in prompts:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                engine.prefill(list(range(len(group))), group)
                torch.cuda.synchronize()
                ms.append((time.perf_counter() - t0) * 1e3)
            row[name] = statistics.median(ms)
        engine._prefiller = packed
        out.append(row)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
