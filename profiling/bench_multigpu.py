"""Batched offline generation on 1 vs N GPUs: `samgpu generate --input ... --output ...` in one
process, then under `torchrun --nproc-per-node N` (DESIGN.md §10), on the same prompts.

For each method it runs the CLI as a user would (a subprocess each), reads the CLI's --stats-json
(generation time from after warm-up to the last write, so model load and graph capture are left
out; the wall time of the whole command is recorded beside it) and checks the N-GPU output file:
every record present, in input order, and how many completions equal the 1-GPU file's. In float32
greedy they must all be equal (every method equals autoregressive decoding, whatever the batch
composition); in bfloat16 a different batch split may flip near-tie tokens, so the share is
reported, not asserted. Each configuration runs `--passes` times (default 2) and the last pass is
reported: a first run on a fresh machine also compiles Triton kernels for shapes the warm-up did
not meet (its throughput is kept as "pass-1 tok/s").

    python -m profiling.bench_multigpu --gpus 1 2 --methods ar,sam+tr,merged --batch-size 64
    python -m profiling.bench_multigpu --gpus 1 2 --methods ar,sam+tr --dtype float32 --limit 96

Prompts: Spec-Bench first turns (chat messages), `--limit` of them spread over the categories.
Results: profiling/results/<day>-<card>-<sha>.jsonl, bench "multigpu"; a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from profiling import datasets
from profiling.common import ROOT, hardware_line, print_table, write_jsonl

# NVLink multicast stays off on the lent machines (workplace rule); harmless elsewhere.
NCCL_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def write_prompts(path: Path, limit: int | None) -> int:
    items = datasets.load("spec_bench", limit=limit)
    with open(path, "w") as f:
        for it in items:
            msg = [{"role": "user", "content": it.turns[0]}]
            f.write(json.dumps({"id": it.item_id, "category": it.category, "messages": msg}) + "\n")
    return len(items)


def generate_command(gpus: int, cli_args: list[str]) -> list[str]:
    if gpus == 1:
        return [sys.executable, "-m", "samgpu", "generate", *cli_args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(gpus),
        "-m",
        "samgpu",
        "generate",
        *cli_args,
    ]


def run_one(gpus: int, method: str, prompts: Path, work: Path, args) -> dict:
    out, stats_path = work / f"{method}-{gpus}gpu.jsonl", work / f"{method}-{gpus}gpu.json"
    cli_args = [
        "--input", str(prompts), "--output", str(out), "--overwrite", "--no-progress",
        "--method", method, "--batch-size", str(args.batch_size),
        "--max-new-tokens", str(args.max_new_tokens), "--dtype", args.dtype,
        "--stats-json", str(stats_path), "--device", args.device,
    ]  # fmt: skip
    batching = "--continuous-batching" if args.continuous_batching else "--no-continuous-batching"
    cli_args.append(batching)
    env = {**os.environ, **NCCL_ENV, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus)))}
    t0 = time.perf_counter()
    proc = subprocess.run(
        generate_command(gpus, cli_args), cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(
            f"{method} on {gpus} GPU(s) failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    stats = json.loads(stats_path.read_text())
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return {"stats": stats, "wall_seconds": wall, "records": records}


def busy_percent(cli_stats: dict) -> float | None:
    """Share of the generation time the ranks spent generating (not waiting or writing), from
    `samgpu generate --stats-json`; None for records without per-rank times."""
    busy = cli_stats.get("rank_generate_seconds")
    return 100 * sum(busy) / len(busy) / cli_stats["generate_seconds"] if busy else None


def count_same(records: list[dict], reference: list[dict]) -> int:
    return sum(a["completion"] == b["completion"] for a, b in zip(records, reference, strict=True))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--methods", default="ar,sam+tr,merged")
    ap.add_argument(
        "--continuous-batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the CLI's batching mode (continuous, its default; or --no-continuous-batching)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--limit", type=int, default=None, help="prompts (default: all 480)")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (gloo)")
    ap.add_argument("--passes", type=int, default=2, help="runs per config; the last is reported")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    import torch

    have = torch.cuda.device_count()
    if args.device == "cuda" and max(args.gpus) > have:
        sys.exit(f"--gpus {max(args.gpus)} asked for, {have} CUDA device(s) visible")
    work = Path(tempfile.mkdtemp(prefix="samgpu-multigpu-"))
    prompts = work / "prompts.jsonl"
    n_prompts = write_prompts(prompts, args.limit)
    ids = [json.loads(line)["id"] for line in prompts.read_text().splitlines()]

    rows, results = [], []
    ar_records: list[dict] | None = None  # the first run of method "ar", when asked for
    for method in args.methods.split(","):
        base: dict | None = None
        for gpus in sorted(args.gpus):
            # pass 1 may compile Triton kernels for shapes not met at warm-up; the last is timed
            passes = [run_one(gpus, method, prompts, work, args) for _ in range(args.passes)]
            run, first = passes[-1], passes[0]
            st, recs = run["stats"], run["records"]
            in_order = [r["id"] for r in recs] == ids
            if base is None:
                base = run
            if ar_records is None and method == "ar":
                ar_records = recs
            same = count_same(recs, base["records"])
            same_ar = count_same(recs, ar_records) if ar_records is not None else None
            row = {
                "method": method,
                "GPUs": gpus,
                "records": len(recs),
                "in order": "yes" if in_order else "NO",
                "new tokens": st["new_tokens"],
                "gen s": st["generate_seconds"],
                "tok/s": st["tokens_per_second"],
                f"x vs {min(args.gpus)} GPU": st["tokens_per_second"]
                / base["stats"]["tokens_per_second"],
                "MAT": st["mean_accepted_tokens"],
                "busy %": busy_percent(st),
                "wall s": run["wall_seconds"],
                "pass-1 tok/s": first["stats"]["tokens_per_second"] if args.passes > 1 else None,
                f"same text as {min(args.gpus)} GPU": f"{same}/{len(recs)}",
                "same text as ar": None if same_ar is None else f"{same_ar}/{len(recs)}",
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            results.append(
                {
                    "bench": "multigpu",
                    "provider": method,
                    "params": {
                        "gpus": gpus,
                        "batch_size": args.batch_size,
                        "max_new_tokens": args.max_new_tokens,
                        "dtype": args.dtype,
                        "prompts": n_prompts,
                        "dataset": "spec_bench first turns",
                        "tag": args.tag,
                        "continuous_batching": args.continuous_batching,
                    },
                    "metric": "generation throughput",
                    "unit": "tokens/s",
                    "tok_s": st["tokens_per_second"],
                    "speedup_vs_1gpu": row[f"x vs {min(args.gpus)} GPU"],
                    "cli_stats": st,
                    "wall_seconds": run["wall_seconds"],
                    "passes": args.passes,
                    "first_pass": {
                        "cli_stats": first["stats"],
                        "wall_seconds": first["wall_seconds"],
                    },
                    "records_in_input_order": in_order,
                    "same_text_as_1gpu": same,
                    "same_text_as_ar": same_ar,
                    "num_records": len(recs),
                }
            )
    path = write_jsonl(results)
    print()
    print(hardware_line())
    title = (
        f"samgpu generate{'' if args.continuous_batching else ' --no-continuous-batching'}, "
        f"{n_prompts} Spec-Bench prompts, B={args.batch_size} per GPU, "
        f"{args.max_new_tokens} new tokens, {args.dtype}"
    )
    print_table(rows, list(rows[0]), title=title)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
