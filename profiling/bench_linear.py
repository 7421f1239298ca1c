"""A decoder layer's projections on the GPU, random weights, no attention: the fused kernels of the
decode step (kernels/fused_linear.py: RMSNorm -> qkv, o + residual, RMSNorm -> gate/up -> SwiGLU,
down + residual; four launches) against the separate kernels (rms_norm, cuBLAS F.linear, silu_mul;
seven launches), and a sweep of the fused kernel's tiles per projection and row count.

    python -m profiling.bench_linear [--shape smollm2 llama7b] [--rows 1 16 64 256 1024]
        [--sweep] [--dtype bf16] [--smoke]

Sections:
- layer (bench "linear_layer"): per-layer us of the two chains over `--rows` rows (B x N of a
  step), each timed as LAYERS calls on distinct weights captured in one CUDA graph (cold L2, as in
  a step), plus the weight-read floor at the card's ~4.8 TB/s.
- sweep (--sweep, bench "linear_sweep"): per projection and row count, block_n x block_k, then
  warps x stages and block_m around the best; the best printed beside the default's time.
--smoke: tiny shapes through the Triton interpreter on the CPU (wall clock), to check the script.
Results go to profiling/results/<date>-<card>-<sha>.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys

if "--smoke" in sys.argv:  # before samgpu.kernels is imported: the interpreter replaces @jit
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from samgpu.kernels.fused_linear import (  # noqa: E402
    LinearConfig,
    default_config,
    fused_linear_triton,
)
from samgpu.kernels.rms_norm import rms_norm_triton  # noqa: E402
from samgpu.kernels.silu_mul import silu_mul_triton  # noqa: E402

try:
    from profiling.bench_attention import DTYPES, Bench
    from profiling.common import hardware_line, print_table
except ImportError:  # run as `python profiling/bench_linear.py`
    from bench_attention import DTYPES, Bench
    from common import hardware_line, print_table

# (hidden, q/k/v width, intermediate)
SHAPES = {"smollm2": (576, 960, 1536), "llama7b": (4096, 12288, 11008), "tiny": (64, 96, 80)}
HBM_TBPS = 4.8


class Layers:
    """`copies` layers of random weights of one shape, and the activations of R rows."""

    def __init__(self, bench: Bench, shape: str, rows: int, copies: int):
        hidden, qkv, inter = SHAPES[shape]
        dev, dt = bench.device, bench.dtype

        def w(*s):
            return (torch.randn(*s, device=dev) / s[-1] ** 0.5).to(dt)

        self.weights = [
            dict(
                norm1=1 + 0.1 * torch.randn(hidden, device=dev).to(dt),
                qkv=w(qkv, hidden),
                o=w(hidden, hidden),  # [H, Hq * D], Hq * D = H here
                norm2=1 + 0.1 * torch.randn(hidden, device=dev).to(dt),
                gate_up=w(2 * inter, hidden),
                down=w(hidden, inter),
            )
            for _ in range(copies)
        ]
        self.inter = inter
        self.h = torch.randn(rows, hidden, device=dev).to(dt)
        self.attn = torch.randn(rows, hidden, device=dev).to(dt)  # stands in for attention
        self.bytes = sum(t.numel() * t.element_size() for t in self.weights[0].values())

    def separate(self) -> list:
        def layer(w):
            x, _ = rms_norm_triton(self.h, w["norm1"], 1e-5)
            F.linear(x, w["qkv"])
            x, _ = rms_norm_triton(F.linear(self.attn, w["o"]), w["norm2"], 1e-5, residual=self.h)
            mlp = F.linear(silu_mul_triton(F.linear(x, w["gate_up"])), w["down"])
            rms_norm_triton(mlp, w["norm1"], 1e-5, residual=self.h)

        return [lambda w=w: layer(w) for w in self.weights]

    def fused(self) -> list:
        def layer(w):
            fused_linear_triton(self.h, w["qkv"], norm_weight=w["norm1"], eps=1e-5)
            fused_linear_triton(self.attn, w["o"], residual=self.h, out=self.h)
            act = fused_linear_triton(
                self.h, w["gate_up"], norm_weight=w["norm2"], eps=1e-5, swiglu=True
            )
            fused_linear_triton(act, w["down"], residual=self.h, out=self.h)

        return [lambda w=w: layer(w) for w in self.weights]

    def op(self, name: str, config: LinearConfig | None) -> list:
        """One projection as the step runs it, per weight copy."""
        act = torch.randn(self.h.shape[0], self.inter, device=self.h.device).to(self.h.dtype)
        calls = {
            "qkv": lambda w: fused_linear_triton(
                self.h, w["qkv"], norm_weight=w["norm1"], config=config
            ),
            "o": lambda w: fused_linear_triton(
                self.attn, w["o"], residual=self.h, out=self.h, config=config
            ),
            "gate_up": lambda w: fused_linear_triton(
                self.h, w["gate_up"], norm_weight=w["norm2"], swiglu=True, config=config
            ),
            "down": lambda w: fused_linear_triton(
                act, w["down"], residual=self.h, out=self.h, config=config
            ),
        }
        return [lambda w=w: calls[name](w) for w in self.weights]


OPS = {  # name -> (K, N) from (hidden, qkv, inter), and swiglu
    "qkv": (lambda s: (s[0], s[1]), False),
    "o": (lambda s: (s[0], s[0]), False),
    "gate_up": (lambda s: (s[0], s[2]), True),
    "down": (lambda s: (s[2], s[0]), False),
}


def layer_section(bench: Bench, shape: str, rows_list: list[int], copies: int) -> list[dict]:
    table = []
    for rows in rows_list:
        layers = Layers(bench, shape, rows, copies)
        sep = bench.time_graph(layers.separate())["p50"] * 1e3
        fus = bench.time_graph(layers.fused())["p50"] * 1e3
        floor = layers.bytes / (HBM_TBPS * 1e12) * 1e6
        params = {"shape": shape, "rows": rows, "dtype": bench.args.dtype}
        bench.record("linear_layer", "separate", params, {"p50": sep / 1e3})
        bench.record("linear_layer", "fused", params, {"p50": fus / 1e3})
        table.append({"shape": shape, "rows": rows, "separate us": sep, "fused us": fus,
                      "speedup": sep / fus, "weights floor us": floor})  # fmt: skip
    return table


def sweep_op(bench: Bench, layers: Layers, shape: str, rows: int, name: str) -> dict:
    """Staged search of one projection's tiles at R rows; returns the table row."""
    kn, swiglu = OPS[name]
    k, n = kn(SHAPES[shape])
    smoke = bench.args.smoke
    base = default_config(rows, n, k, swiglu)
    times: dict[LinearConfig, float] = {}

    def run(cfg: LinearConfig) -> None:
        if cfg in times:
            return
        try:
            times[cfg] = bench.time_graph(layers.op(name, cfg))["p50"] * 1e3
        except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
            print(f"  skip {name} R={rows} {cfg}: {type(exc).__name__}")
            return
        params = {"shape": shape, "op": name, "rows": rows, "dtype": bench.args.dtype,
                  "config": list(vars(cfg).values())}  # fmt: skip
        bench.record("linear_sweep", "triton", params, {"p50": times[cfg] / 1e3})

    run(base)
    for bn in [16] if smoke else [16, 32, 64, 128]:
        for bk in [64] if smoke else [64, 128, 256]:
            run(LinearConfig(base.block_m, bn, bk, 4, 3))
    best = min(times, key=times.get)
    for w, st in [] if smoke else [(2, 3), (4, 2), (4, 4), (4, 5), (8, 3)]:
        run(LinearConfig(best.block_m, best.block_n, best.block_k, w, st))
    best = min(times, key=times.get)
    for bm in [] if smoke else [16, 32, 64, 128]:
        if bm != best.block_m and (bm <= 2 * rows or bm == 16):
            run(LinearConfig(bm, best.block_n, best.block_k, best.num_warps, best.num_stages))
    best = min(times, key=times.get)
    return {"shape": shape, "op": name, "rows": rows, "default us": times[base],
            "best us": times[best], "best": tuple(vars(best).values()),
            "tested": len(times)}  # fmt: skip


def sweep_section(bench: Bench, shape: str, rows_list: list[int], copies: int) -> list[dict]:
    table = []
    for rows in rows_list:
        layers = Layers(bench, shape, rows, copies)
        table += [sweep_op(bench, layers, shape, rows, name) for name in OPS]
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", nargs="+", default=["smollm2"], choices=sorted(SHAPES))
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 16, 64, 256, 1024])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument(
        "--copies", type=int, default=None, help="weight copies (default 30 / 4 for 7B)"
    )
    ap.add_argument("--rep-ms", type=int, default=100)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.shape, args.rows, args.dtype = ["tiny"], [3, 20], "fp32"
    bench = Bench(args)
    print(hardware_line())
    for shape in args.shape:
        copies = args.copies or (1 if args.smoke else 4 if shape == "llama7b" else 30)
        table = layer_section(bench, shape, args.rows, copies)
        print_table(table, list(table[0]), title=f"{shape}: per-layer projections (us)")
        if args.sweep:
            table = sweep_section(bench, shape, args.rows, copies)
            print_table(table, list(table[0]), title=f"{shape}: fused_linear tile sweep (us)")
        bench.flush()


if __name__ == "__main__":
    main()
