"""How much of an admission's prefill is padding (CPU, no model run): the prompts of bench_serve's
mixed file, refill groups of k prompts drawn at random, each group planned as the engine plans it
(`samgpu.decoding.prefill.plan_calls`, graph buckets from `call_bucket`), and the padded tokens
computed (rows bucket x width bucket per call) against the prompts' real tokens.

    python -m profiling.prefill_padding [--groups 1 2 4 8 16] [--draws 300]

A graph call computes every padded token (the GEMMs run over rows x width), so padded / real is
the factor by which an admission's linear layers exceed the work of its prompts; `calls` is the
mean number of calls per admission (each costs a fixed ~1.2 ms of launches on an H200:
profile_step's prefill times at 128..2,048 tokens fit 1.19 ms + 0.85 us per padded token).
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
    args = ap.parse_args(argv)

    from samgpu import api
    from samgpu.decoding.prefill import call_bucket, plan_calls

    _, tokenizer = api.load_model("default", torch.device("cpu"), torch.float32)
    lengths = prompt_lengths(tokenizer, args.limit)
    rng = random.Random(0)
    rows, records = [], []
    for k in args.groups:
        real = padded = calls = 0
        for _ in range(args.draws):
            group = rng.sample(lengths, k)
            plan = plan_calls(group, args.rows, args.max_len)
            for call in plan:
                r, w = call_bucket(len(call), max(group[i] for i in call), args.rows, args.max_len)
                real += sum(group[i] for i in call)
                padded += r * w
            calls += len(plan)
        row = dict(group=k, real_tokens=real / args.draws, padded_over_real=padded / real)
        row["calls"] = calls / args.draws
        rows.append(row)
        records.append(dict(bench="prefill_padding", prompts=len(lengths), **row))
    mean = sum(lengths) / len(lengths)
    title = f"prefill padding: {len(lengths)} prompts, mean {mean:.0f} / max {max(lengths)} tokens"
    print_table(rows, ["group", "real_tokens", "padded_over_real", "calls"], title=title)
    print(hardware_line(env()))
    print(f"wrote {write_jsonl(records)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
