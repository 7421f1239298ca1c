"""Results JSONL -> markdown tables (stdout) and PNG plots.

    python -m profiling.report profiling/results/<run>.jsonl [...] [--plots DIR]

End-to-end records (bench == "e2e") become the paper's layout: one row per method, columns
MT, Trans, Summ, QA, Math, RAG (speedup over our `ar`), then MAT and Overall speedup, plus tokens/s.
Batch-curve records (bench == "e2e", several batch sizes) become speedup vs batch size.
Cost-model records (bench == "cost_model") become projected 7B speedups.
Multi-GPU records (bench == "multigpu", profiling/bench_multigpu.py) become one table per setting:
tokens/s on 1 and N GPUs per method, the ratio, MAT, busy share and same-text counts.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections import defaultdict

from profiling.bench_multigpu import busy_percent
from profiling.datasets import TABLE_COLUMNS


def read(paths: list[str]) -> list[dict]:
    recs = []
    for p in paths:
        with open(p) as f:
            recs += [json.loads(line) for line in f if line.strip()]
    return recs


def run_key(r: dict) -> tuple:
    """Records of one table: same dataset, batch size, dtype and tag (one bench_e2e invocation's
    setting; the `ar` row of the same key is the speedup baseline)."""
    return (r["dataset"], r["batch_size"], r["params"].get("dtype"), r["params"].get("tag", ""))


def e2e_table(recs: list[dict], dataset: str, batch_size: int, key: tuple | None = None) -> str:
    rows = [
        r for r in recs
        if r.get("bench") == "e2e" and r["dataset"] == dataset and r["batch_size"] == batch_size
        and (key is None or run_key(r) == key)
    ]  # fmt: skip
    if not rows:
        return ""
    by = defaultdict(dict)
    for r in rows:
        by[r["method"]][r["category"]] = r
    ar = by.get("ar", {})
    cols = [c for c in TABLE_COLUMNS if any(c in m for m in by.values())] or sorted(
        {c for m in by.values() for c in m if c != "Overall"}
    )
    gpu = rows[0].get("env", {}).get("gpu", "?")
    p = rows[0]["params"]
    first = rows[0]["method"]
    num_requests = sum(
        r["num_requests"] for r in rows if r["category"] != "Overall" and r["method"] == first
    )
    head = (
        f"**{dataset}**, B={batch_size}, {p.get('model', '?')} {p.get('dtype', '')}, "
        f"{p.get('max_new_tokens')} new tokens, "
        f"{num_requests} requests" + (f", tag {p['tag']}" if p.get("tag") else "") + f", {gpu}\n\n"
    )
    head += "| method | " + " | ".join(cols) + " | MAT | Overall | tok/s | identical to ar |\n"
    head += "|---" * (len(cols) + 5) + "|\n"
    lines = []
    for method, cats in by.items():
        cells = []
        for c in cols:
            r, base = cats.get(c), ar.get(c)
            cells.append(f"{r['tok_s'] / base['tok_s']:.2f}x" if r and base else "—")
        o, base = cats.get("Overall"), ar.get("Overall")
        ident = o.get("identical_to_ar") if o else None
        mat = o.get("mat") if o else None
        cells += [
            f"{mat:.2f}" if mat else "—",
            f"{o['tok_s'] / base['tok_s']:.2f}x" if o and base else "—",
            f"{o['tok_s']:.0f}" if o else "—",
            f"{ident:.0%}" if ident is not None else "—",
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def batch_curve(recs: list[dict], dataset: str = "spec_bench") -> dict[str, list[tuple]]:
    """Speedup over `ar` vs batch size for bf16 runs of `dataset`; where a batch size was run
    under several tags, the latest record wins (records are in run order)."""
    rows = [
        r for r in recs
        if r.get("bench") == "e2e" and r["category"] == "Overall" and r["dataset"] == dataset
        and r["params"].get("dtype") == "bfloat16"
        and not str(r["params"].get("tag", "")).startswith("ablation")
    ]  # fmt: skip
    ar = {run_key(r): r["tok_s"] for r in rows if r["method"] == "ar"}
    latest: dict[tuple[str, int], float] = {}
    for r in rows:
        if r["method"] != "ar" and run_key(r) in ar:
            latest[(r["method"], r["batch_size"])] = r["tok_s"] / ar[run_key(r)]
    curve = defaultdict(list)
    for (method, b), speedup in latest.items():
        curve[method].append((b, speedup))
    return {m: sorted(v) for m, v in curve.items()}


def plots(recs: list[dict], out: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made = []
    for dataset in sorted({r["dataset"] for r in recs if r.get("bench") == "e2e"}):
        rows = [
            r for r in recs
            if r.get("bench") == "e2e" and r["dataset"] == dataset and r["batch_size"] == 1
            and r["params"].get("dtype") == "bfloat16"
            and not str(r["params"].get("tag", "")).startswith("ablation")
        ]  # fmt: skip
        ar = {(run_key(r), r["category"]): r["tok_s"] for r in rows if r["method"] == "ar"}
        speedup: dict[tuple[str, str], float] = {}  # latest run of each method wins
        for r in rows:
            if r["method"] != "ar" and (run_key(r), r["category"]) in ar:
                speedup[(r["method"], r["category"])] = r["tok_s"] / ar[(run_key(r), r["category"])]
        methods = list(dict.fromkeys(m for m, _ in speedup))
        cats = [c for c in dict.fromkeys(c for _, c in speedup)]
        if not methods or not cats:
            continue
        fig, ax = plt.subplots(figsize=(1.2 * len(cats) + 4, 4))
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            vals = [speedup.get((m, c), 0.0) for c in cats]
            ax.bar([j + i * width for j in range(len(cats))], vals, width, label=m)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))], cats)
        ax.set_ylabel("speedup over ar")
        ax.set_title(f"{dataset}, B=1, {rows[0].get('env', {}).get('gpu', '')}")
        ax.legend(fontsize=7, ncol=2)
        path = out / f"speedup-{dataset}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        made.append(path)
    for table in multigpu_tables(recs):
        print(table)
    curve = batch_curve(recs)
    if any(len(v) > 1 for v in curve.values()):
        fig, ax = plt.subplots(figsize=(5, 4))
        for m, pts in curve.items():
            ax.plot([b for b, _ in pts], [s for _, s in pts], marker="o", label=m)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("speedup over ar")
        ax.legend()
        path = out / "speedup-vs-batch.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        made.append(path)
    return made


def multigpu_tables(recs: list[dict]) -> list[str]:
    """One markdown table per (prompts, batch size, tokens, dtype, tag, samgpu commit) of
    bench_multigpu records: a row per method, tokens/s per GPU count."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in recs:
        if r.get("bench") == "multigpu":
            p = r["params"]
            mode = "continuous" if p.get("continuous_batching") else "plain"
            key = (p["prompts"], p["batch_size"], p["max_new_tokens"], p["dtype"], p.get("tag", ""))
            key = (*key[:4], f"{key[4] or '—'}, {mode} batching")
            groups[(*key, r.get("passes"), r["env"].get("samgpu_sha"), r["env"].get("gpu"))].append(
                r
            )
    tables = []
    for (prompts, batch, tokens, dtype, tag, passes, sha, gpu), rows in groups.items():
        counts = sorted({r["params"]["gpus"] for r in rows})
        head = [f"{g} GPU{'s' if g > 1 else ''} tok/s" for g in counts]
        lines = [
            f"**multi-GPU** `samgpu generate`, {prompts} prompts, B={batch} per GPU, {tokens} new"
            f" tokens, {dtype}, tag {tag}, samgpu {sha}, {gpu}; "
            + (
                f"pass {passes} of each command (kernels compiled)"
                if passes and passes > 1
                else "one pass (includes Triton compilation: tokens/s not comparable)"
            ),
            "",
            "| method | " + " | ".join(head) + f" | {counts[-1]} vs {counts[0]} | MAT | busy % "
            f"({counts[-1]} GPUs) | same text as {counts[0]} GPU | same text as ar |",
            "|---|" + "---|" * (len(counts) + 5),
        ]
        for method in dict.fromkeys(r["provider"] for r in rows):
            by_gpus = {r["params"]["gpus"]: r for r in rows if r["provider"] == method}
            top = by_gpus.get(counts[-1])
            cells = [f"{by_gpus[g]['tok_s']:,.0f}" if g in by_gpus else "—" for g in counts]
            ratio = f"{top['speedup_vs_1gpu']:.2f}x" if top else "—"
            mat = f"{top['cli_stats']['mean_accepted_tokens']:.2f}" if top else "—"
            busy = busy_percent(top["cli_stats"]) if top else None
            busy_pct = f"{busy:.0f}" if busy is not None else "—"
            same = f"{top['same_text_as_1gpu']}/{top['num_records']}" if top else "—"
            same_ar = top.get("same_text_as_ar") if top else None
            same_ar = f"{same_ar}/{top['num_records']}" if same_ar is not None else "—"
            lines.append(
                f"| {method} | "
                + " | ".join(cells)
                + f" | {ratio} | {mat} | {busy_pct} | {same} | {same_ar} |"
            )
        tables.append("\n".join(lines) + "\n")
    return tables


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--plots", type=pathlib.Path, default=None)
    args = ap.parse_args(argv)
    recs = read(args.results)
    keys = list(dict.fromkeys(run_key(r) for r in recs if r.get("bench") == "e2e"))
    for key in keys:
        print(e2e_table(recs, key[0], key[1], key))
    for table in multigpu_tables(recs):
        print(table)
    curve = batch_curve(recs)
    if curve:
        print("speedup vs batch size:")
        for m, pts in curve.items():
            print(f"  {m}: " + ", ".join(f"B={b}: {s:.2f}x" for b, s in pts))
    for r in recs:
        if r.get("bench") == "cost_model":
            print(
                f"projected 7B ({r['method']}, {r['dataset']}): MAT {r['mat']:.2f}, "
                f"t(1) {r['t1_ms']:.2f} ms, t(N={r['nodes']}) {r['tn_ms']:.2f} ms, "
                f"draft {r['draft_ms']:.3f} ms -> {r['projected_speedup']:.2f}x"
            )
    if args.plots:
        for p in plots(recs, args.plots):
            print("wrote", p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
