"""CPU end to end: `samgpu generate` (the command line, as a user runs it) with the default method
and with `ar`, against transformers `model.generate`, on the same prompts, model and dtype, at
batch 1 and batch 4 (issue 14, item 10; not a timed test).

    python -m profiling.bench_cpu [--limit 8] [--max-new-tokens 64] [--batch-sizes 1,4] [--rep 2]
                                  [--methods default,ar] [--env OMP_WAIT_POLICY=ACTIVE ...]

Protocol. Prompts: the first `--limit` Spec-Bench first turns (spread over its categories), as
chat messages; both sides apply the same chat template. Model: the embedded default
(SmolLM2-135M-Instruct), float32, greedy, `--max-new-tokens` each (EOS ends a sequence early).
Every measurement is a fresh process, as a user runs one command:
- `samgpu`: `python -m samgpu generate --input P --output O --device cpu --batch-size B ...
  --stats-json S`; tokens/s = new tokens / generate_seconds from S (model load and index excluded;
  the first steps' one-time costs included, as the user pays them);
- `hf`: a worker process (`--worker hf`) loading the same model with `samgpu.models.load_default`
  and calling `model.generate(**batch, max_new_tokens=T, do_sample=False)` on left-padded batches
  of B prompts, timed from the first generate call to the last (no warm-up call either); tokens
  counted per row up to and including its first EOS.
Both inherit this process's environment (plus `--env`), so both get the same thread settings
unless a side sets its own: the samgpu CLI sets OMP_WAIT_POLICY=PASSIVE when unset (see the
README's CPU section), transformers does not; `--env OMP_WAIT_POLICY=PASSIVE` gives it to both.
Without --threads / OMP_NUM_THREADS the samgpu CLI also runs decode steps with one thread where
that measured faster ("1-thread steps"; prefills keep every thread); `--env OMP_NUM_THREADS=2`
(this machine's count) pins both sides to it.
Repetitions are interleaved (rep 1 of every provider, then rep 2, ...) so that other load on a
shared machine spreads over all of them; the table shows the median and the range.
Outputs: greedy float32 texts must be identical between samgpu and transformers (`same_as_hf`).
Prints one table with the hardware line under it; appends one JSON object per (provider, batch)
to profiling/results/<date>-cpu-<sha>.jsonl (or $SAMGPU_RESULTS_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from profiling import datasets
from profiling.common import ROOT, env, hardware_line, print_table, write_jsonl


def prompts(limit: int) -> list[str]:
    return [item.turns[0] for item in datasets.load("spec_bench", limit=limit)]


def child_env(extra: list[str]) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    for item in extra:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def run_samgpu(method: str, batch: int, src: Path, work: Path, args) -> dict:
    out, stats = work / f"out-{method}-{batch}.jsonl", work / f"stats-{method}-{batch}.json"
    cmd = [sys.executable, "-m", "samgpu", "generate", "--input", str(src), "--output", str(out),
           "--overwrite", "--device", "cpu", "--no-progress", "--batch-size", str(batch),
           "--max-new-tokens", str(args.max_new_tokens), "--stats-json", str(stats)]  # fmt: skip
    if method != "default":
        cmd += ["--method", method]
    proc = subprocess.run(cmd, env=child_env(args.env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    s = json.loads(stats.read_text())
    texts = [json.loads(x)["completion"] for x in out.read_text().splitlines()]
    return {
        "tok_s": s["new_tokens"] / s["generate_seconds"],
        "tokens": s["new_tokens"],
        "seconds": s["generate_seconds"],
        "mat": s["mean_accepted_tokens"],
        "drafting_steps": s["drafting_steps"],
        "single_thread_steps": s.get("single_thread_steps"),
        "steps": s["steps"],
        "method": s["method"],
        "texts": texts,
    }


def run_hf(batch: int, src: Path, args) -> dict:
    cmd = [sys.executable, "-m", "profiling.bench_cpu", "--worker", "hf", "--input", str(src),
           "--batch", str(batch), "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
    proc = subprocess.run(cmd, env=child_env(args.env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"hf worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def hf_worker(path: str, batch: int, max_new_tokens: int) -> None:
    """One transformers run, printed as one JSON line (runs in its own process)."""
    import torch

    from samgpu.api import encode_chat, eos_ids
    from samgpu.models import load_default

    model, tok = load_default("cpu")
    texts = [json.loads(x)["prompt"] for x in Path(path).read_text().splitlines()]
    ids = [encode_chat(tok, [{"role": "user", "content": t}]) for t in texts]
    eos = set(eos_ids(model, tok))
    pad = tok.pad_token_id
    tokens, outs = 0, []
    start = time.perf_counter()
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        width = max(map(len, chunk))
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        for row in out[:, width:].tolist():
            end = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
            tokens += end
            outs.append(tok.decode(row[:end], skip_special_tokens=True))
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "tok_s": tokens / seconds,
                "tokens": tokens,
                "seconds": seconds,
                "threads": torch.get_num_threads(),
                "texts": outs,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=8, help="prompts (Spec-Bench first turns)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--methods", default="default,ar", help="samgpu methods; default: none given")
    ap.add_argument("--rep", type=int, default=2, help="interleaved repetitions")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for every measured process")  # fmt: skip
    ap.add_argument("--tag", default="", help="free-form label stored with every record")
    ap.add_argument("--worker", choices=["hf"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "hf":
        hf_worker(args.input, args.batch, args.max_new_tokens)
        return

    batches = [int(b) for b in args.batch_sizes.split(",")]
    providers = ["hf", *(f"samgpu:{m}" for m in args.methods.split(","))]
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "prompts.jsonl"
        src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(args.limit)))
        for rep in range(args.rep):
            for batch in batches:
                for provider in providers:
                    if provider == "hf":
                        r = run_hf(batch, src, args)
                    else:
                        r = run_samgpu(provider.split(":", 1)[1], batch, src, work, args)
                    results.setdefault((provider, batch), []).append(r)
                    print(
                        f"rep {rep + 1} B={batch} {provider}: {r['tok_s']:.2f} tok/s",
                        file=sys.stderr,
                        flush=True,
                    )

    rows, records = [], []
    for batch in batches:
        hf_med = statistics.median(r["tok_s"] for r in results[("hf", batch)])
        hf_texts = results[("hf", batch)][0]["texts"]
        for provider in providers:
            runs = results[(provider, batch)]
            rates = sorted(r["tok_s"] for r in runs)
            med = statistics.median(rates)
            first = runs[0]
            same = sum(a == b for a, b in zip(first["texts"], hf_texts, strict=True))
            row = {
                "batch": batch,
                "provider": provider
                if provider == "hf"
                else f"samgpu {first['method']}"
                + (" (default)" if provider.endswith(":default") else ""),
                "tok/s": med,
                "range": f"{rates[0]:.2f}-{rates[-1]:.2f}",
                "vs hf": med / hf_med,
                "MAT": first.get("mat"),
                "drafting steps": (
                    f"{first['drafting_steps']}/{first['steps']}" if "steps" in first else None
                ),
                "1-thread steps": (
                    f"{first['single_thread_steps']}/{first['steps']}"
                    if first.get("single_thread_steps") is not None
                    else None
                ),
                "same_as_hf": f"{same}/{len(hf_texts)}",
            }
            rows.append(row)
            records.append(
                {
                    "bench": "cpu_e2e",
                    "provider": row["provider"],
                    "params": {
                        "batch_size": batch,
                        "max_new_tokens": args.max_new_tokens,
                        "prompts": args.limit,
                        "dataset": "spec_bench first turns",
                        "model": "default (SmolLM2-135M-Instruct)",
                        "dtype": "float32",
                        "env": args.env,
                        "tag": args.tag,
                    },
                    "metric": "tok_s",
                    "unit": "tok/s",
                    "p50": med,
                    "p20": rates[0],
                    "p80": rates[-1],
                    "tok_s": med,
                    "vs_hf": med / hf_med,
                    "mat": first.get("mat"),
                    "same_as_hf": same / len(hf_texts),
                    "single_thread_steps": first.get("single_thread_steps"),
                    "reps": [r["tok_s"] for r in runs],
                }
            )
    title = (
        f"CPU, SmolLM2-135M float32, greedy, {args.limit} Spec-Bench prompts,"
        f" {args.max_new_tokens} new tokens, median of {args.rep}"
        + (f"; env {' '.join(args.env)}" if args.env else "")
    )
    columns = ["batch", "provider", "tok/s", "range", "vs hf", "MAT", "drafting steps"]
    columns.append("1-thread steps")
    print_table(rows, [*columns, "same_as_hf"], title=title)
    print(hardware_line(env()))
    print(f"results: {write_jsonl(records)}")


if __name__ == "__main__":
    main()
