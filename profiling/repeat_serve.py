"""The same `samgpu generate` run repeated in one process: does every repetition give the same
kind of output? A check for faults that depend on what earlier decoders in the process left
behind (streams, memory), which one-run benchmarks cannot see.

    python -m profiling.repeat_serve [--method pld] [--batch-size 64] [--runs 12] [--limit 1280]

Each run goes through bench_serve's CLI path (the factory, scheduler and file writer a user's
command runs; continuous batching, bf16, greedy): `ar` once, then `--method` `--runs` times. Per
run: tokens, same outputs as `ar` and as the method's first run, tok/s; a run is flagged when its
tokens differ from `ar`'s by more than 20% (greedy decoding of the same prompts: bf16 near-ties
change a few outputs, not their total length). Why (H200, 2026-12-02): 2 of 17, then 3 of
12 `pld` runs at B=64 decoded twice `ar`'s tokens with ~240 of 1,280 outputs equal to `ar`'s (~610
in the others): a landing during plain steps had overwritten the EOS ids (kernels/load_rows.py,
docs/BATCHED-RUNS.md). Results: a table and profiling/results/<day>-<card>-<sha>.jsonl
(bench "repeat_serve").
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from profiling import bench_serve
from profiling.common import hardware_line, print_table, write_jsonl


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="pld")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--limit", type=int, default=1280, help="prompts of the mixed file")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args(argv)
    if args.runs < 1 or args.batch_size < 1 or args.limit < 1:
        ap.error("--runs, --batch-size and --limit must be >= 1")
    # what bench_serve.run_cli reads from its own arguments
    cli = argparse.Namespace(
        dtype="bfloat16",
        max_new_tokens=args.max_new_tokens,
        speculation="adaptive",
        exact=False,
        temperature=0.0,
        seed=0,
        check_every=None,
    )
    tmp = Path(tempfile.mkdtemp(prefix="samgpu-repeat-"))
    src = tmp / "prompts.jsonl"
    bench_serve.write_prompts(src, args.limit)

    def run(method: str, i: int) -> dict:
        r = bench_serve.run_cli(src, tmp / f"{i}.jsonl", cli, method, args.batch_size, "continuous")
        r["texts"] = [rec["completion"] for rec in r["records"]]
        return r

    ar = run("ar", 0)
    rows, first = [], None
    for i in range(1, args.runs + 1):
        r = run(args.method, i)
        first = first or r["texts"]
        ratio = r["new_tokens"] / ar["new_tokens"]
        rows.append(
            dict(
                bench="repeat_serve",
                method=args.method,
                batch_size=args.batch_size,
                run=i,
                requests=len(r["texts"]),
                new_tokens=r["new_tokens"],
                tokens_vs_ar=round(ratio, 3),
                same_as_ar=sum(a == b for a, b in zip(ar["texts"], r["texts"], strict=True)),
                same_as_first=sum(a == b for a, b in zip(first, r["texts"], strict=True)),
                tok_s=round(r["new_tokens"] / r["generate_seconds"]),
                flagged=bench_serve.tokens_suspect(ratio),
            )
        )
        print(f"run {i}: {rows[-1]}", flush=True)
    columns = ["run", "new_tokens", "tokens_vs_ar", "same_as_ar", "same_as_first", "tok_s"]
    print_table(rows, [*columns, "flagged"], title=f"{args.method} B={args.batch_size}")
    print(hardware_line())
    print(f"flagged: {sum(r['flagged'] for r in rows)} of {len(rows)}")
    print(f"results: {write_jsonl(rows)}")
    return 1 if any(r["flagged"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
