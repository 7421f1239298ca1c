"""Batched offline generation as users run it: `samgpu generate --input FILE --output ...` (the CLI
in-process: the same factory, scheduler and file writer as a user's command) on a mixed, shuffled
prompt file, over batch sizes, methods and batching modes.

    python -m profiling.bench_serve --batch-sizes 1 16 64 256 --methods ar,pld,sam+tr,merged
    python -m profiling.bench_serve --batch-sizes 16 --methods ar,merged --modes static,continuous
    python -m profiling.bench_serve --batch-sizes 16 --methods ar,merged,merged:max_nodes=32

A method may carry options after colons (`merged:max_nodes=32`, the CLI's `-O max_nodes=32`).
Prompts: Spec-Bench first turns, HumanEval and HAGRID (chat messages; HumanEval's code prompt as
the user turn), shuffled with a fixed seed (not sorted by category), `--limit` of them.

Per run (from the CLI's --stats-json and output records): output tokens/s (generation time from
after the CLI's warm-up to the last write), mean accepted tokens per step, request latency p50 /
p99 (seconds from the run's start to the request's collection, queueing included), the time
shares of prefill, decode steps and host work (the scheduler's own accounting), the time per
loop step (decode time / loop steps), the decode steps' own tokens/s and its ratio to `ar`'s
(`decode_vs_ar`: what speculation buys with admissions and host work left out) and the slot
occupancy (requests' steps / (loop steps x B)) and where the other slot-steps went (`slot_shares`:
free while prompts waited, free with none left, pending admissions, past a request's end until
the host check), the GPU busy share (NVML utilisation sampled
every 50 ms during the generation, when available), and how many completions equal `ar`'s at
the same batch size and mode (float32: all must; bfloat16: near-ties may flip, except with
--exact) and to `ar`'s at the first batch size listed (same prompt file when --per-slot and
--min-requests give every batch size the same prompts: `ar` invariant across batch sizes).
With `--temperature T --seed S` every run samples, and the same counts hold for samples (noise
keyed by seed, record and position: kernels/randoms.py).
Each configuration runs `--passes` times (default 2); the last pass is reported (the first also
compiles Triton kernels for shapes the warm-up did not meet). `compiles_per_pass` counts the
Triton compilations inside each pass's timed generation (Triton's jit_cache_hook) and
`compiled_per_pass` names them: a kernel specializing on a value met late compiles mid-run.
Results: profiling/results/<day>-<card>-<sha>.jsonl, bench "serve"; a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from profiling import datasets
from profiling.common import GcPauses, TritonCompiles, hardware_line, print_table, write_jsonl

MODES = ("static", "continuous")


def write_prompts(path: Path, limit: int, seed: int = 0) -> int:
    """The mixed file: every benchmark prompt as one chat turn, shuffled, the first `limit`."""
    items = [*datasets.load("spec_bench"), *datasets.load("humaneval"), *datasets.load("hagrid")]
    random.Random(seed).shuffle(items)
    items = items[:limit]
    with open(path, "w") as f:
        for it in items:
            text = it.turns[0] if it.turns else it.raw_prompt
            msg = [{"role": "user", "content": text}]
            f.write(json.dumps({"id": it.item_id, "category": it.category, "messages": msg}) + "\n")
    return len(items)


class GpuBusy:
    """GPU utilisation sampled from NVML every `period_s` during a block, with the sample times
    (no samples without a GPU or pynvml)."""

    def __init__(self, period_s: float = 0.05):
        self.period_s = period_s
        self.samples: list[tuple[float, int]] = []  # (perf_counter, utilisation %)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            try:
                torch.cuda.utilization()
            except Exception:  # noqa: BLE001 - no pynvml / NVML: report None
                return self
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        import torch

        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), int(torch.cuda.utilization())))
            time.sleep(self.period_s)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def share(self, since: float = float("-inf")) -> float | None:
        """Mean utilisation (0..1) of the samples taken at or after `since` (perf_counter)."""
        kept = [u for t, u in self.samples if t >= since]
        return statistics.fmean(kept) / 100 if kept else None


def tokens_suspect(tokens_vs_ar: float | None) -> bool:
    """Whether a greedy run's tokens differ from `ar`'s on the same prompts by more than 20%:
    bf16 near-ties change a few outputs, not their total length (a run that lost its EOS ids
    nearly doubled it: repeat_serve.py)."""
    return tokens_vs_ar is not None and abs(tokens_vs_ar - 1) > 0.2


def run_cli(src: Path, out: Path, args, method: str, batch: int, mode: str) -> dict:
    from samgpu.cli import main as cli_main

    stats = out.with_suffix(".stats.json")
    argv = ["generate", "--input", str(src), "--output", str(out), "--overwrite"]
    name, *options = method.split(":")  # "merged:max_nodes=32": the CLI's -O max_nodes=32
    argv += ["--method", name, "--batch-size", str(batch), "--dtype", args.dtype]
    for opt in options:
        argv += ["-O", opt]
    argv += ["--max-new-tokens", str(args.max_new_tokens), "--no-progress"]
    argv += ["--stats-json", str(stats), "--speculation", args.speculation]
    if args.exact:
        argv.append("--exact")
    if args.temperature > 0:
        argv += ["--temperature", str(args.temperature), "--seed", str(args.seed)]
    if args.check_every is not None:
        argv += ["--check-every", str(args.check_every)]
    argv.append("--continuous-batching" if mode == "continuous" else "--no-continuous-batching")
    with GpuBusy() as busy, TritonCompiles() as compiles, GcPauses() as pauses:
        code = cli_main(argv)
        returned = time.perf_counter()
    if code != 0:
        raise SystemExit(f"samgpu generate failed (exit {code}): {' '.join(argv)}")
    totals = json.loads(stats.read_text())
    records = [json.loads(line) for line in out.read_text().splitlines()]
    latency = sorted(r["stats"]["finish_s"] for r in records if r.get("stats"))
    # the generation only (it ended at the last write, just before the CLI returned): not the
    # model load and warm-up before it
    started = returned - totals["generate_seconds"]
    busy_share = busy.share(since=started)
    # kernels compiled inside the timed generation (after the CLI's warm-up): their time is in it
    compiled = compiles.since(started)
    gc_pauses = pauses.since(started)
    return dict(
        totals,
        gpu_busy=busy_share,
        latency=latency,
        records=records,
        compiled=compiled,
        gc_seconds=sum(took for took, _ in gc_pauses),
        gc_oldest=[took for took, gen in gc_pauses if gen == 2],
    )


def occupancy(run: dict, batch: int) -> float | None:
    """Share of the batch's slot-steps that ran a live request: the requests' steps over
    loop steps x B (a slot waiting for a refill, or idle while a static batch drains, is not)."""
    steps = run.get("steps")
    if not steps:
        return None
    live = sum(rec["stats"]["steps"] for rec in run["records"] if rec.get("stats"))
    return live / (steps * batch)


def slot_shares(run: dict) -> dict[str, float | None]:
    """The batch's slot-steps by state (RunStats' accounting, rank 0): free while prompts waited
    (a refill not yet made), free with none left (the drain), pending admissions, and past the
    request's end until the host check (the live ones, the rest: `occupancy`)."""
    slots = run.get("slot_steps") or {}
    total = slots.get("slot_steps")
    names = ("free_waiting", "free_drained", "pending", "past_end")
    if not total:
        return dict.fromkeys(names, None)
    return {name: slots[f"{name}_slot_steps"] / total for name in names}


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_serve", description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    ap.add_argument("--methods", default="ar,pld,sam+tr,merged")
    ap.add_argument("--modes", default="static,continuous")
    ap.add_argument(
        "--limit",
        type=int,
        default=1360,
        help="prompts in the mixed file at most (default: all 1,360; B=256 gets every one)",
    )
    ap.add_argument(
        "--per-slot",
        type=int,
        default=8,
        help="prompts per batch slot (at least --min-requests): small batches get short files",
    )
    ap.add_argument("--min-requests", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--exact", action="store_true", help="samgpu generate --exact")
    ap.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling (with --seed): same_as_ar then counts equal samples",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--check-every", type=int, default=None, help="samgpu generate --check-every (default: its)"
    )
    ap.add_argument("--speculation", default="adaptive", choices=["adaptive", "always"])
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown modes {bad}; choose from {', '.join(MODES)}")
    if args.limit < 1:
        ap.error(f"--limit must be >= 1 (prompts in the mixed file), got {args.limit}")
    if args.passes < 1:
        ap.error(f"--passes must be >= 1 (the last is reported), got {args.passes}")

    records, rows = [], []
    first_ar: dict[str, list[str]] = {}  # mode -> ar's completions at the first batch size
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batch_sizes:
            src = Path(tmp) / f"prompts-{batch}.jsonl"
            limit = min(args.limit, max(args.min_requests, args.per_slot * batch))
            n = write_prompts(src, limit)
            print(f"B={batch}: {n} prompts (Spec-Bench, HumanEval, HAGRID, shuffled), {args.dtype}")
            for mode in modes:
                ar_texts = ar_tokens = None
                for method in methods:
                    out = Path(tmp) / f"out-{method}-{batch}-{mode}.jsonl"
                    passes = [run_cli(src, out, args, method, batch, mode)]
                    for _ in range(args.passes - 1):
                        passes.append(run_cli(src, out, args, method, batch, mode))
                    r = passes[-1]
                    texts = [rec["completion"] for rec in r["records"]]
                    if method == "ar":
                        ar_texts, ar_tokens = texts, r["new_tokens"]
                        first_ar.setdefault(mode, texts)
                    same = same_first = None
                    if ar_texts is not None:
                        same = sum(a == b for a, b in zip(ar_texts, texts, strict=True))
                    ref = first_ar.get(mode)
                    if ref is not None and len(ref) == len(texts):
                        same_first = sum(a == b for a, b in zip(ref, texts, strict=True))
                    timing = r.get("timing") or {}
                    total = sum(timing.values()) or None
                    rec = dict(
                        bench="serve",
                        provider="samgpu-cli",
                        method=method,
                        batch_size=batch,
                        mode=mode,
                        num_requests=len(r["records"]),
                        new_tokens=r["new_tokens"],
                        generate_seconds=r["generate_seconds"],
                        tok_s=r["tokens_per_second"],
                        pass1_tok_s=passes[0]["tokens_per_second"],
                        # Triton compiles inside each pass's timed generation, and the kernels
                        # (specializations) each compiled, the first 10
                        compiles_per_pass=[len(p["compiled"]) for p in passes],
                        compiled_per_pass=[p["compiled"][:10] for p in passes],
                        # Python's garbage collections inside each pass's timed generation: their
                        # seconds, and those of the oldest generation's (full) collections
                        gc_seconds_per_pass=[p["gc_seconds"] for p in passes],
                        gc_full_per_pass=[p["gc_oldest"] for p in passes],
                        mat=r["mean_accepted_tokens"],
                        latency_p50_s=quantile(r["latency"], 0.5),
                        latency_p99_s=quantile(r["latency"], 0.99),
                        prefill_share=timing.get("prefill_s", 0) / total if total else None,
                        decode_share=timing.get("steps_s", 0) / total if total else None,
                        host_share=timing.get("host_s", 0) / total if total else None,
                        gpu_busy=r["gpu_busy"],
                        steps=r.get("steps"),
                        # adaptive speculation: the share of steps that drafted (the rest plain)
                        drafting_share=(
                            r["drafting_steps"] / r["steps"] if r.get("steps") else None
                        ),
                        step_ms=1e3 * timing["steps_s"] / r["steps"] if r.get("steps") else None,
                        decode_tok_s=(
                            r["new_tokens"] / timing["steps_s"] if timing.get("steps_s") else None
                        ),
                        occupancy=occupancy(r, batch),
                        **slot_shares(r),
                        same_as_ar=same,
                        same_as_first_b_ar=same_first,
                        params=dict(
                            dtype=args.dtype,
                            exact=args.exact,
                            temperature=args.temperature,
                            seed=args.seed if args.temperature > 0 else None,
                            check_every=args.check_every,
                            speculation=args.speculation,
                            max_new_tokens=args.max_new_tokens,
                            num_prompts=n,
                            tag=args.tag,
                        ),
                    )
                    records.append(rec)
                    rows.append(rec)
                    rec["tokens_vs_ar"] = r["new_tokens"] / ar_tokens if ar_tokens else None
                    if rec["compiles_per_pass"][-1]:
                        print(
                            f"WARNING: B={batch} {mode} {method}: {rec['compiles_per_pass'][-1]} "
                            "Triton compiles inside the reported pass (compiled_per_pass)",
                            flush=True,
                        )
                    if args.temperature == 0 and tokens_suspect(rec["tokens_vs_ar"]):
                        print(
                            f"WARNING: B={batch} {mode} {method} emitted "
                            f"{rec['tokens_vs_ar']:.2f}x `ar`'s tokens: its outputs are suspect",
                            flush=True,
                        )
                    print(
                        f"B={batch:<4} {mode:<10} {method:<8} {rec['tok_s']:>10,.0f} tok/s"
                        f"  MAT {rec['mat'] or 1:.2f}  p50 {rec['latency_p50_s'] or 0:.2f}s"
                        f"  same-as-ar {same}/{len(texts)}",
                        flush=True,
                    )
    for rec in rows:
        base = next(
            (
                x
                for x in rows
                if x["method"] == "ar"
                and x["batch_size"] == rec["batch_size"]
                and x["mode"] == rec["mode"]
            ),
            None,
        )
        rec["vs_ar"] = rec["tok_s"] / base["tok_s"] if base else None
        # the decode steps alone (admissions and host work left out): what speculation buys
        both = base and rec["decode_tok_s"] and base["decode_tok_s"]
        rec["decode_vs_ar"] = rec["decode_tok_s"] / base["decode_tok_s"] if both else None
    path = write_jsonl(records)
    columns = ["batch_size", "mode", "method", "tok_s", "vs_ar", "decode_vs_ar", "mat"]
    columns += ["latency_p50_s"]
    columns += ["latency_p99_s", "prefill_share", "decode_share", "host_share", "gpu_busy"]
    columns += [
        "step_ms",
        "drafting_share",
        "occupancy",
        "free_waiting",
        "free_drained",
        "pending",
        "past_end",
    ]
    columns += ["same_as_ar", "same_as_first_b_ar"]
    print_table(rows, columns)
    print(hardware_line())
    print("results:", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
