"""The user-facing layer on the card: is `SamDecoder` a free drop-in for `model.generate`?

Three measurements, same model, dtype, prompts and card:
1. equivalence: `SamDecoder.generate(input_ids)` vs transformers `model.generate(input_ids)` greedy,
   one prompt at a time -> fraction of outputs identical token for token (1.0 expected in float32;
   bfloat16 may differ after a logit near-tie).
2. overhead: tokens/s of `SamDecoder.generate_ids` (what the CLI calls) vs the decode loop
   `Decoder.generate` called directly with the same decoder and prompts, per method and batch
   size -> relative overhead of the API layer (argument handling, capacity checks, stats).
3. cli: `samgpu generate --input/--output` end to end (model load and index excluded: timed from
   the first batch to the final rename) -> records/s and tokens/s, per method and batch size.

    python -m profiling.bench_api --methods ar,sam+tr --batch-sizes 1,8,32 --limit 32
Prints one table per measurement (hardware line under it) and appends JSONL records to
profiling/results/<date>-<card>-<sha>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from profiling import datasets
from profiling.common import env, hardware_line, print_table, write_jsonl


def _prompts(tokenizer, limit: int) -> list[list[int]]:
    from samgpu.api import encode_chat

    out = []
    for item in datasets.load("spec_bench", limit=limit):
        out.append(encode_chat(tokenizer, [{"role": "user", "content": item.turns[0]}]))
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def equivalence(model, tokenizer, prompts, max_new_tokens: int, method: str) -> dict:
    from samgpu.api import SamDecoder

    dec = SamDecoder(model, tokenizer, method, index="default")
    same = 0
    for p in prompts:
        ids = torch.tensor([p], device=model.device)
        want = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        got = dec.generate(ids, max_new_tokens=max_new_tokens)
        same += int(torch.equal(want.cpu(), got.cpu()))
    return {"identical": same / len(prompts), "n": len(prompts)}


def overhead(model, tokenizer, prompts, max_new_tokens: int, method: str, batch: int) -> dict:
    from samgpu.api import SamDecoder, eos_ids
    from samgpu.decoding.config import GenerationConfig

    dec = SamDecoder(model, tokenizer, method, index="default")
    eos = eos_ids(model, tokenizer)
    kw = dict(max_new_tokens=max_new_tokens, eos_token_ids=eos, batch_size=batch)
    dec.generate_ids(prompts[:batch], **kw)  # warm-up: capacity, CUDA graphs, Triton compiles
    decoder = dec.ensure_capacity(batch, dec.needed_len(max(map(len, prompts)), max_new_tokens))
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_ids=eos)
    decoder.generate(prompts[:batch], config)

    _sync()
    t0 = time.perf_counter()
    out = dec.generate_ids(prompts, **kw)
    _sync()
    t_api = time.perf_counter() - t0
    t0 = time.perf_counter()
    direct = decoder.generate(prompts, config)
    _sync()
    t_direct = time.perf_counter() - t0
    tokens = sum(len(t) for t in out.tokens)
    return {
        "tok_s_api": tokens / t_api,
        "tok_s_direct": sum(len(t) for t in direct.tokens) / t_direct,
        "overhead": t_api / t_direct - 1.0,
        "mat": sum(s.get("mat", 0.0) for s in dec.last_stats) / max(len(dec.last_stats), 1),
    }


def cli_run(
    model_name: str,
    dtype: str,
    prompts_text: list[str],
    max_new_tokens: int,
    method: str,
    batch: int,
) -> dict:
    from samgpu.cli import main as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        stats = Path(tmp) / "stats.json"
        src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts_text))
        args = ["generate", "--input", str(src), "--output", str(out), "--model", model_name]
        args += ["--dtype", dtype, "--method", method, "--batch-size", str(batch)]
        args += ["--max-new-tokens", str(max_new_tokens), "--no-progress"]
        code = cli_main([*args, "--stats-json", str(stats)])
        totals = json.loads(stats.read_text())  # timed from after the CLI's warm-up
        records = [json.loads(x) for x in out.read_text().splitlines()]
    seconds = totals["generate_seconds"]
    tokens = sum(r["num_tokens"] or 0 for r in records)
    return {"exit": code, "records_s": len(records) / seconds, "tok_s": tokens / seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--methods", default="ar,sam+tr")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--limit", type=int, default=32, help="Spec-Bench prompts (first turns)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--equivalence-prompts", type=int, default=8)
    ap.add_argument("--skip-cli", action="store_true")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    batches = [int(b) for b in args.batch_sizes.split(",") if b]

    from samgpu import api

    device = api.resolve_device("auto")
    dtype = api.resolve_dtype(args.dtype, device)
    model, tokenizer = api.load_model(args.model, device, dtype)
    prompts = _prompts(tokenizer, args.limit)
    texts = [it.turns[0] for it in datasets.load("spec_bench", limit=args.limit)]
    e = env()
    records, eq_rows, ov_rows, cli_rows = [], [], [], []
    base = {"model": args.model, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens}

    for method in methods:
        r = equivalence(
            model, tokenizer, prompts[: args.equivalence_prompts], args.max_new_tokens, method
        )
        eq_rows.append({"method": method, **r})
        records.append(
            {
                "bench": "api_equivalence",
                "provider": method,
                "params": base,
                "metric": "identical_fraction",
                "unit": "fraction",
                "p50": r["identical"],
                "n": r["n"],
                "env": e,
            }
        )
        for b in batches:
            r = overhead(model, tokenizer, prompts, args.max_new_tokens, method, b)
            ov_rows.append({"method": method, "B": b, **r})
            records.append(
                {
                    "bench": "api_overhead",
                    "provider": method,
                    "params": {**base, "batch_size": b, "num_prompts": len(prompts)},
                    "metric": "tok_s",
                    "unit": "tokens/s",
                    "p50": r["tok_s_api"],
                    "tok_s": r["tok_s_api"],
                    "tok_s_direct": r["tok_s_direct"],
                    "overhead": r["overhead"],
                    "mat": r["mat"],
                    "env": e,
                }
            )
            if not args.skip_cli:
                c = cli_run(args.model, args.dtype, texts, args.max_new_tokens, method, b)
                cli_rows.append({"method": method, "B": b, **c})
                records.append(
                    {
                        "bench": "cli_jsonl",
                        "provider": method,
                        "params": {**base, "batch_size": b, "num_prompts": len(texts)},
                        "metric": "tok_s",
                        "unit": "tokens/s",
                        "p50": c["tok_s"],
                        "tok_s": c["tok_s"],
                        "records_s": c["records_s"],
                        "env": e,
                    }
                )

    print_table(
        eq_rows,
        ["method", "identical", "n"],
        title=f"SamDecoder.generate vs model.generate, greedy, {args.dtype}",
    )
    print(hardware_line(e), "\n")
    print_table(
        ov_rows,
        ["method", "B", "tok_s_api", "tok_s_direct", "overhead", "mat"],
        title=f"API layer overhead, {len(prompts)} Spec-Bench prompts",
    )
    print(hardware_line(e), "\n")
    if cli_rows:
        print_table(
            cli_rows,
            ["method", "B", "records_s", "tok_s", "exit"],
            title="samgpu generate --input/--output, end to end (model load excluded)",
        )
        print(hardware_line(e), "\n")
    path = write_jsonl(records)
    print(f"results appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
