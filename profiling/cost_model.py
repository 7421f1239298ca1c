"""Projected 7B speedups from measured 135M acceptance (DESIGN.md §7 cost model).

    python -m profiling.cost_model profiling/results/<run>.jsonl ... --verify-log runtime.log

For each B=1 bf16 end-to-end record with its `ar` baseline (same run), the measured step time
(MAT / tok/s) minus the 135M verify forward t135(N) gives the method's non-model time per step
(drafting, tree, verify, commit, update, prefill share). The projection swaps in the verify
forward of a random-weight Llama-2-7B-shaped model on the same card:

    projected = MAT x (t7(1) + overhead_ar) / (t7(N) + overhead_method)

N is the method's tree width at B=1 (`samgpu.factory.draft_nodes`). The verify curves come
from `bench_runtime` records (bench == "runtime_verify") or, when only its log survives, from the
markdown tables in that log (`--verify-log`). t(N) is interpolated linearly between measured N.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from profiling.report import read, run_key
from samgpu.factory import draft_nodes


def curves_from_records(recs: list[dict]) -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = {}
    for r in recs:
        if r.get("bench") == "runtime_verify" and r["params"]["batch_size"] == 1:
            curves.setdefault(r["params"]["model"], {})[r["params"]["num_nodes"]] = r["p50"]
    return curves


def curves_from_log(path: Path) -> dict[str, dict[int, float]]:
    """Rows `| model | 1 | N | p50 | ...` of bench_runtime's verify tables."""
    curves: dict[str, dict[int, float]] = {}
    row = re.compile(r"^\| (.+?) \| 1 \| (\d+) \| ([\d.,]+) \|")
    for line in path.read_text().splitlines():
        m = row.match(line)
        if m:
            curves.setdefault(m[1].strip(), {})[int(m[2])] = float(m[3].replace(",", ""))
    return curves


def interpolate(curve: dict[int, float], n: int) -> float:
    xs = sorted(curve)
    if n <= xs[0]:
        return curve[xs[0]]
    for lo, hi in zip(xs, xs[1:], strict=False):
        if lo <= n <= hi:
            return curve[lo] + (curve[hi] - curve[lo]) * (n - lo) / (hi - lo)
    return curve[xs[-1]] * n / xs[-1]  # past the last point: linear in N (compute-bound)


def project(recs: list[dict], small: dict[int, float], big: dict[int, float]) -> list[dict]:
    rows = [
        r for r in recs
        if r.get("bench") == "e2e" and r["category"] == "Overall" and r["batch_size"] == 1
        and r["params"].get("dtype") == "bfloat16" and r.get("mat")
    ]  # fmt: skip
    ar = {run_key(r): r for r in rows if r["method"] == "ar"}
    out = []
    for r in rows:
        base = ar.get(run_key(r))
        if base is None:
            continue
        nodes = int(
            r["params"].get("options", {}).get("max_nodes") or draft_nodes(r["method"], 1, "cuda")
        )
        step = r["mat"] / r["tok_s"] * 1e3  # ms per step, measured
        step_ar = 1e3 / base["tok_s"]
        overhead = step - interpolate(small, nodes)
        overhead_ar = step_ar - interpolate(small, 1)
        projected = (
            r["mat"] * (interpolate(big, 1) + overhead_ar) / (interpolate(big, nodes) + overhead)
        )
        out.append(
            dict(
                bench="cost_model",
                dataset=r["dataset"],
                method=r["method"],
                tag=r["params"].get("tag", ""),
                mat=r["mat"],
                nodes=nodes,
                measured_speedup=r["tok_s"] / base["tok_s"],
                overhead_ms=overhead,
                t1_ms=interpolate(big, 1),
                tn_ms=interpolate(big, nodes),
                draft_ms=overhead,
                projected_speedup=projected,
                env=r.get("env"),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--verify-log", type=Path, default=None)
    ap.add_argument("--small", default="SmolLM2", help="substring naming the measured model")
    ap.add_argument("--big", default="7b", help="substring naming the 7B-shaped model")
    ap.add_argument("--out", type=Path, default=None, help="JSONL for the projections")
    args = ap.parse_args(argv)
    recs = read(args.results)
    curves = curves_from_records(recs)
    if args.verify_log:
        curves.update(curves_from_log(args.verify_log))
    small = next((c for m, c in curves.items() if args.small.lower() in m.lower()), None)
    big = next((c for m, c in curves.items() if args.big.lower() in m.lower()), None)
    if not small or not big:
        raise SystemExit(f"need verify curves for both models; found {sorted(curves)}")
    rows = project(recs, small, big)
    print("| method | dataset | tag | MAT | N | measured 135M | non-model ms/step | 7B t(1) | "
          "7B t(N) | projected 7B |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in rows:
        print(
            f"| {p['method']} | {p['dataset']} | {p['tag']} | {p['mat']:.2f} | {p['nodes']} | "
            f"{p['measured_speedup']:.2f}x | {p['overhead_ms']:.3f} | {p['t1_ms']:.2f} | "
            f"{p['tn_ms']:.2f} | {p['projected_speedup']:.2f}x |"
        )
    if args.out:
        with open(args.out, "w") as f:
            for p in rows:
                f.write(json.dumps(p) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
