"""Cross-request store benchmark (issue 16): MAT and tokens/s with and without the store, on the
GPU, decoders built exactly as the CLI builds them (`samgpu.api.SamDecoder`, continuous batching).

    python -m profiling.bench_store                  # ~5 min on an H200 (model, index, 16 decoders)
    python -m profiling.bench_store --batch-sizes 1 --methods sam+tr --scale 0.5
    python -m profiling.bench_store --option store_prompts=true --tag prompts
    python -m profiling.bench_store --stream full --workloads a --speculation always --no-cost

Workloads (greedy, bfloat16, --max-new-tokens per request), per batch size B:
 (a) stream: Spec-Bench first turns (spread over its six categories), then HumanEval, then HAGRID,
     one call (continuous batching), the store empty at the start; `--stream full`: the whole
     datasets (480 Spec-Bench first turns in category order, 164 HumanEval, 716 HAGRID), the
     issue's stream, in which later requests have ~1,000 earlier answers to draft from;
 (b) repeated tasks: HumanEval prompts, then each again rephrased (a comment line in front), the
     store empty at the start;
 (c) stream (a) again, the store loaded from the file saved at the end of (a) (a rerun of a job
     with --store PATH).
Methods: `sam` (chains only), `sam+tr`, `merged`, each with the store off and on (default
budget), plus `ar` for speedups. One decoder per (method, B, store); between workloads the store
part is emptied / loaded through its public methods (samgpu.drafters.store_of), and no
decoder is rebuilt (capacity is set for the longest prompt first).

Reported per (B, workload, method, store): tokens/s, speedup over `ar`, MAT (bonus included; with
`--speculation adaptive` plain steps count too, so the share of loop steps that drafted is
reported beside it: compare drafts with `--speculation always`), share of steps drafted from the
store, outputs identical to the store-off run. Then the store's
cost: `sam+tr` with the store on but never chosen (store_bias 10**6: the same drafts and outputs,
so any time difference is the store's matching in every step and its appends at every finish)
against the store off, best of --reps alternating runs of (a) -> step-time overhead (target <= 3%
at B=1); the append rate (us per token, one GPU thread); GPU bytes per stored token.
Tables on stdout (hardware line under them); JSON records via profiling.common.write_jsonl.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from profiling import datasets
from profiling.common import env, hardware_line, print_table, write_jsonl

METHODS = ("sam", "sam+tr", "merged")
NEVER = 10**6  # store_bias that keeps the store from ever being chosen
# Prompts per dataset and batch size (scaled by --scale): enough for B=64 to run continuous
# batching over a real stream, few enough for ~5 minutes on an H200 in all.
LIMITS = {1: {"spec": 12, "code": 8, "rag": 8}, 64: {"spec": 96, "code": 64, "rag": 64}}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _kv(s: str):
    key, _, raw = s.partition("=")
    from samgpu.cli.generate import parse_options

    return next(iter(parse_options([f"{key}={raw}"]).items()))


def workloads(
    tokenizer, batch_size: int, scale: float, full: bool = False
) -> dict[str, list[list[int]]]:
    """The prompts of (a), (b), (c); `full`: (a) and (c) are the whole datasets, in file order."""
    from samgpu.api import encode_chat

    sampled = {k: max(1, int(v * scale)) for k, v in LIMITS.get(batch_size, LIMITS[64]).items()}
    lim = dict.fromkeys(sampled, None) if full else sampled
    chat = lambda text: encode_chat(tokenizer, [{"role": "user", "content": text}])  # noqa: E731
    raw = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    spec = [chat(it.turns[0]) for it in datasets.load("spec_bench", lim["spec"])]
    code_items = datasets.load("humaneval", lim["code"])
    code = [raw(it.raw_prompt) for it in code_items]
    rag = [chat(it.turns[0]) for it in datasets.load("hagrid", lim["rag"])]
    again = [raw("# Complete the function below.\n" + it.raw_prompt) for it in code_items]
    code_b = code
    if full:  # (b) keeps its sampled size: it asks every HumanEval prompt twice either way
        code_b, again = code[: sampled["code"]], again[: sampled["code"]]
    return {"a": spec + code + rag, "b": code_b + again, "c": spec + code + rag}


class Runner:
    """One SamDecoder (method, batch size, store setting), warmed up, capacity fixed."""

    def __init__(self, model, tokenizer, index, method, batch_size, longest, args, **options):
        from samgpu.api import SamDecoder, eos_ids

        self.dec = SamDecoder(
            model,
            tokenizer,
            method,
            index,
            continuous_batching=True,
            speculation=args.speculation,
            **options,
        )
        self.batch_size = batch_size
        self.max_new = args.max_new_tokens
        self.eos = eos_ids(model, tokenizer)
        self.scheduler = self.dec.ensure_capacity(
            batch_size, self.dec.needed_len(longest, self.max_new)
        )
        t0 = time.perf_counter()
        warm = [[int(t) for t in range(100, 100 + 24 + i)] for i in range(2 * batch_size)]
        # graphs for width B in both speculation modes (the adaptive policy tries plain steps
        # after two drafting windows), refills, Triton compiles: all before any timing
        self.generate(warm, 64)
        _sync()
        self.warmup_s = time.perf_counter() - t0
        self.reset_store()

    @property
    def store(self):
        from samgpu.drafters import store_of

        return store_of(self.scheduler.drafter)

    def reset_store(self) -> None:
        if self.store is not None:
            self.store.automaton.reset()

    def generate(self, prompts, max_new=None):
        return self.dec.generate_ids(
            prompts,
            max_new_tokens=max_new or self.max_new,
            eos_token_ids=self.eos,
            batch_size=self.batch_size,
        )

    def run(self, prompts) -> dict:
        _sync()
        t0 = time.perf_counter()
        out = self.generate(prompts)
        _sync()
        secs = time.perf_counter() - t0
        gen = sum(s.generated for s in out.stats)
        steps = sum(s.steps for s in out.stats)
        from_store = sum(s.sources.get("store", 0) for s in out.stats)
        return {
            "tokens": out.tokens,
            "seconds": secs,
            "generated": gen,
            "tok_s": gen / secs if secs else 0.0,
            "mat": gen / steps if steps else None,
            "store_steps": from_store / steps if steps else 0.0,
            # adaptive speculation's plain steps count in MAT: the share of loop steps that drafted
            "drafting": out.run.drafting_steps / out.run.steps if out.run.steps else None,
        }


def bench_methods(model, tokenizer, index, args, b: int, prompts, records, rows) -> None:
    longest = max(len(p) for ps in prompts.values() for p in ps)
    base: dict[tuple[str, str], dict] = {}  # (method, workload) -> store-off result
    ar: dict[str, float] = {}
    store_file = Path(tempfile.mkdtemp()) / "bench.samstore"
    options = dict(args.option)
    wanted = [wl for wl in ("a", "b", "c") if wl in args.workloads]
    for method in ("ar", *args.methods) if args.ar else args.methods:
        for store in (False, True) if method != "ar" else (False,):
            opts = {**options, "store": True} if store else {}
            r = Runner(model, tokenizer, index, method, b, longest, args, **opts)
            for wl in wanted:
                if store and wl == "b":
                    r.reset_store()
                if store and wl == "c":
                    if not store_file.exists():  # (a) was not run: nothing saved to load
                        continue
                    r.store.load(store_file)
                res = r.run(prompts[wl])
                if store and wl == "a":
                    r.store.save(store_file)
                    stats = r.store.stats()
                    stored = sum(stats["tokens"])
                    records.append(
                        dict(
                            bench="store",
                            metric="gpu_bytes",
                            method=method,
                            batch_size=b,
                            stored_tokens=stored,
                            device_bytes=stats["device_bytes"],
                            bytes_per_stored_token=stats["device_bytes"] / max(stored, 1),
                            bytes_per_budget_token=stats["bytes_per_token_of_capacity"],
                        )
                    )
                if method == "ar":
                    ar[wl] = res["tok_s"]
                if not store:
                    base[(method, wl)] = res
                    if args.save_outputs is not None and wl == "a":
                        save_outputs(args.save_outputs, method, b, prompts[wl], res["tokens"])
                same = None
                if store:
                    same = res["tokens"] == base[(method, wl)]["tokens"]
                row = dict(
                    B=b,
                    workload=wl,
                    method=method,
                    store="on" if store else "off",
                    requests=len(prompts[wl]),
                    tok_s=res["tok_s"],
                    speedup=res["tok_s"] / ar[wl] if ar.get(wl) else None,
                    MAT=res["mat"],
                    store_steps=res["store_steps"] if store else None,
                    drafting=res["drafting"],
                    same_as_off=same,
                    warmup_s=r.warmup_s,
                )
                rows.append(row)
                records.append(
                    dict(
                        bench="store",
                        provider="samgpu",
                        metric="tok_s",
                        unit="tok/s",
                        p50=res["tok_s"],
                        params=dict(
                            batch_size=b,
                            workload=wl,
                            method=method,
                            store=store,
                            max_new_tokens=args.max_new_tokens,
                            requests=len(prompts[wl]),
                            options=opts,
                            tag=args.tag,
                        ),
                        **{k: v for k, v in row.items() if k not in ("B", "method", "workload")},
                        generated_tokens=res["generated"],
                        seconds=res["seconds"],
                    )
                )
            del r
            torch.cuda.empty_cache()


def save_outputs(folder: Path, method: str, b: int, prompts, outputs) -> None:
    """The stream's prompts and outputs as ids (JSONL.gz), for drafting studies off the GPU."""
    import gzip
    import json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"store-outputs-{method.replace('+', '_')}-B{b}-a.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for p, o in zip(prompts, outputs, strict=True):
            f.write(json.dumps({"prompt": list(p), "output": list(o)}) + "\n")
    print(f"wrote {path}")


def bench_cost(model, tokenizer, index, args, b: int, prompts, records, rows) -> None:
    """sam+tr with the store on but never chosen vs off: same drafts, so the time difference is
    the store's own cost; plus the append rate of one GPU thread."""
    longest = max(len(p) for p in prompts["a"])
    opts = dict(args.option)
    on = Runner(
        model, tokenizer, index, "sam+tr", b, longest, args,
        **{**opts, "store": True, "store_bias": NEVER},
    )  # fmt: skip
    off = Runner(model, tokenizer, index, "sam+tr", b, longest, args, **opts)
    best = {"on": float("inf"), "off": float("inf")}
    same, ref = True, None
    for _ in range(args.reps):
        for name, r in (("off", off), ("on", on)):
            r.reset_store()
            res = r.run(prompts["a"])
            best[name] = min(best[name], res["seconds"])
            if name == "on":
                same &= res["tokens"] == ref
            else:
                ref = res["tokens"]
    docs = [t for t in ref if t]
    on.reset_store()
    _sync()
    t0 = time.perf_counter()
    on.store.automaton.append_docs(docs)
    _sync()
    append_s = time.perf_counter() - t0
    n_tok = sum(len(d) + 1 for d in docs)
    row = dict(
        B=b,
        seconds_off=best["off"],
        seconds_on=best["on"],
        overhead=best["on"] / best["off"] - 1.0,
        same_outputs=same,
        append_us_per_token=append_s / n_tok * 1e6,
        append_tokens=n_tok,
    )
    rows.append(row)
    records.append(dict(bench="store_cost", provider="samgpu", metric="overhead", **row))
    del on, off
    torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.bench_store", description=__doc__)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the prompt counts")
    ap.add_argument("--reps", type=int, default=2, help="alternating runs for the cost")
    ap.add_argument("--no-cost", action="store_true", help="skip the store-cost measurement")
    ap.add_argument("--speculation", default="adaptive", choices=["adaptive", "always"])
    ap.add_argument("--option", action="append", default=[], type=_kv, help="KEY=VALUE")
    ap.add_argument(
        "--stream",
        default="sample",
        choices=["sample", "full"],
        help="(a)/(c): a sample spread over the datasets (default) or the whole datasets "
        "(480 Spec-Bench first turns by category, 164 HumanEval, 716 HAGRID)",
    )
    ap.add_argument("--workloads", default="a,b,c", help="a subset of a,b,c")
    ap.add_argument("--save-outputs", type=Path, help="folder for the store-off outputs of (a)")
    ap.add_argument("--no-ar", dest="ar", action="store_false", help="skip `ar` (no speedups)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    args.workloads = {w.strip() for w in args.workloads.split(",") if w.strip()}
    if not args.workloads or args.workloads - {"a", "b", "c"}:
        ap.error(f"--workloads: a subset of a,b,c, got {sorted(args.workloads)}")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in ("sam", "sam+tr", "sam-tree", "merged")]
    if bad:
        ap.error(f"methods {bad}: the store is an option of sam, sam+tr, sam-tree, merged")
    if not torch.cuda.is_available():
        print("warning: no CUDA device: this benchmark is meant for the GPU")

    from samgpu import api, resolve

    t_start = time.perf_counter()
    device = api.resolve_device("auto")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer = api.load_model("default", device, dtype)
    index = resolve.load_index(resolve.default_index(tokenizer, progress=True), tokenizer)
    records: list[dict] = []
    rows: list[dict] = []
    cost_rows: list[dict] = []
    for b in (int(x) for x in args.batch_sizes.split(",")):
        prompts = workloads(tokenizer, b, args.scale, full=args.stream == "full")
        print(f"B={b}: " + ", ".join(f"({k}) {len(v)} requests" for k, v in prompts.items()))
        bench_methods(model, tokenizer, index, args, b, prompts, records, rows)
        if not args.no_cost:
            bench_cost(model, tokenizer, index, args, b, prompts, records, cost_rows)
    cols = ["B", "workload", "method", "store", "requests", "tok_s", "speedup", "MAT"]
    cols += ["drafting", "store_steps", "same_as_off"]
    print_table(rows, cols, title=f"store: SmolLM2-135M bf16, {args.max_new_tokens} new tokens")
    if cost_rows:
        cost_cols = ["B", "seconds_off", "seconds_on", "overhead", "same_outputs"]
        cost_cols += ["append_us_per_token", "append_tokens"]
        print_table(cost_rows, cost_cols, title="store cost (sam+tr, store on but never chosen)")
    mem = [r for r in records if r.get("metric") == "gpu_bytes"]
    if mem:
        mem_cols = ["method", "batch_size", "stored_tokens", "device_bytes"]
        mem_cols += ["bytes_per_stored_token", "bytes_per_budget_token"]
        print_table(mem, mem_cols, title="store memory after stream (a)")
    print(hardware_line(env()))
    path = write_jsonl(records)
    print(f"wrote {path} ({time.perf_counter() - t_start:.0f}s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
