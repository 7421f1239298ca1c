"""Attention kernels on the GPU, random data, no model: prefill vs SDPA, the tree-attention config
sweep, exact mode's cost, and exact mode's bitwise invariance on the real compiler and hardware.

    python -m profiling.bench_attention [--sections prefill prefill-tiles tree exact invariance]
        [--quick]
        [--dtype bf16] [--smoke]
    python -m profiling.bench_attention --sections tree --heads smollm2 --batches 16 64 256
        --nodes 1 4 --wide --ragged --write-tuning
    (the H200 table's B >= 16 entries, 2026-11-30; its B = 1 ones: --batches 1 without --ragged,
    N 1 and 4 then, N 16 and 81 on 2026-12-01: the B=1 trees had run the heuristic until then)

Sections (bf16 unless --dtype; heads: SmolLM2 9 q / 3 kv, D 64 and Llama-2-7B 32 / 32, D 128):
- prefill (bench "prefill_attention"): one layer's causal prefill attention, T in {128, 512, 1000,
  2000}, B in {1, 8}: samgpu's Triton kernel vs SDPA (default backend, cuDNN, flash, efficient,
  math), with the max |error| vs SDPA and the 30-layer total (SmolLM2 has 30 layers); then
  (bench "prefill_new_lengths") the wall-clock ms per call over 40 lengths never seen before
  (50..1,500 tokens, B=1, SmolLM2 heads): cuDNN builds a plan per new length, Triton does not.
- tree (bench "tree_attention_sweep"): split-KV tree attention per (heads, B, N, context) over
  block_m, block_n, num_splits, num_warps, num_stages, timing the kernel as the verify step
  launches it (RoPE and the K/V write fused in, kernels/rope_tree_attention.py), staged to stay
  fast: (1) block_n x num_splits at context 1024, (2) num_warps x num_stages and block_m around
  the best, (3) the top configurations at contexts 512 and 2048 (--ragged: prefixes of mixed
  lengths, the longest ctx).
  Reported: us and GB/s of K/V read (2 * Hkv * (sum of prefixes + B * N) * D * 2 bytes), the
  heuristic default's time, the best configuration per geometry (least total slowdown over the
  three contexts), printed as a dict literal for
  kernels/tuned/tree_attention.json (with --write-tuning), which tree_attention's defaults read.
- exact (bench "exact_attention"): exact_attention (fp32 FMA math; exact-tc: the opt-in
  tensor-core variant) vs the fast tree_attention at context 1024: exact mode's attention cost.
- invariance (bench "exact_invariance"): the bitwise checks of tests/kernels/test_exact_attention.py
  at the real default configuration (SmolLM2 heads, 700 tokens of context: 3 splits of 256):
  one query decoded alone vs the same query in batches of 1..64, in any slot, as a node at depth d
  of trees of 7..81 nodes, with other cache/tree splits, and via the prefill form; fp32, bf16 and
  bf16 with tensor cores (bf16-tc); plus the negative controls (must differ).
Timing: triton's do_bench (L2 flushed between calls, CUDA events), compile and autotune excluded;
the tree sweep times LAYER_COPIES calls on distinct K/V captured in one CUDA graph (the in-graph
kernel time of a decode step, without Python's launch cost).
Results go to profiling/results/<date>-<card>-<sha>.jsonl. A full run takes ~3-4 minutes on an
H200 (most of it compiling sweep variants); --quick sweeps fewer configurations.
--smoke runs tiny shapes through the Triton interpreter on the CPU (wall clock) to check the script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from functools import partial

if "--smoke" in sys.argv:  # before samgpu.kernels is imported: the interpreter replaces @jit
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from samgpu.kernels.exact_attention import (  # noqa: E402
    exact_attention_triton,
    exact_prefill_attention_triton,
    exact_tree_plan,
)
from samgpu.kernels.prefill_attention import (  # noqa: E402
    default_config as prefill_default,
)
from samgpu.kernels.prefill_attention import (
    prefill_attention_ref,
    prefill_attention_triton,
)
from samgpu.kernels.rope_tree_attention import rope_tree_attention_triton  # noqa: E402
from samgpu.kernels.tree_attention import (  # noqa: E402
    tree_attention_ref,
    tree_attention_triton,
)
from samgpu.kernels.tree_attention_config import (  # noqa: E402
    BATCH_BUCKETS,
    NODE_BUCKETS,
    TUNING_FILE,
    default_config,
    tuning_key,
)

try:
    from profiling.common import bench_cpu, bench_gpu, hardware_line, print_table, write_jsonl
except ImportError:  # run as `python profiling/bench_attention.py`
    from common import bench_cpu, bench_gpu, hardware_line, print_table, write_jsonl

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEADS = {"smollm2": (9, 3, 64), "llama7b": (32, 32, 128)}
SMOLLM2_LAYERS = 30
LAYER_COPIES = 8  # distinct K/V tensors per graph-timed geometry (L2 stays cold, as in a step)


class Bench:
    """Timing and result collection for one run (GPU: do_bench; smoke: CPU wall clock)."""

    def __init__(self, args):
        self.args = args
        self.device = "cpu" if args.smoke else "cuda"
        self.dtype = DTYPES[args.dtype]
        self.rows: list[dict] = []
        self.sms = 1 if args.smoke else torch.cuda.get_device_properties(0).multi_processor_count

    def time(self, fn) -> dict:
        if self.args.smoke:
            return bench_cpu(fn, rep=1, warmup=1)
        fn()  # compile outside the measurement
        torch.cuda.synchronize()
        return bench_gpu(fn, rep_ms=self.args.rep_ms, warmup_ms=5)

    def time_graph(self, fns: list) -> dict:
        """Per-call GPU milliseconds of `fns` (e.g. one call per layer, each on its own K/V, as a
        decode step runs them) captured back to back in one CUDA graph: the in-graph kernel time,
        without the Python launch cost that dominates do_bench for microsecond kernels."""
        if self.args.smoke:
            t = bench_cpu(lambda: [f() for f in fns], rep=1, warmup=1)
            return {k: v / len(fns) for k, v in t.items()}
        for f in fns:
            f()  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for f in fns:
                f()
        t = bench_gpu(graph.replay, rep_ms=self.args.rep_ms, warmup_ms=5)
        return {k: v / len(fns) for k, v in t.items()}

    def record(self, bench: str, provider: str, params: dict, t: dict, **derived) -> dict:
        row = {"bench": bench, "provider": provider, "params": params, "metric": "latency",
               "unit": "ms", **t, **derived}  # fmt: skip
        self.rows.append(row)
        return row

    def flush(self) -> None:
        if not self.args.smoke and self.rows:
            print("wrote", write_jsonl(self.rows))
        self.rows = []


def randn(*shape, b: Bench) -> torch.Tensor:
    return torch.randn(*shape, device=b.device, dtype=torch.float32).to(b.dtype)


# ------------------------------------------------------------------------------------- prefill
def sdpa_providers():
    from torch.nn.attention import SDPBackend

    return {
        "sdpa-default": None,
        "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa-flash": SDPBackend.FLASH_ATTENTION,
        "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa-math": SDPBackend.MATH,
    }


def sdpa_call(q, k, v, backend, scale):
    """The runner's prefill today: causal SDPA of q [B, T, Hq, D] over the cache's first T slots."""
    from torch.nn.attention import sdpa_kernel

    def run():
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2),
            k,
            v,
            is_causal=True,
            scale=scale,
            enable_gqa=q.shape[2] != k.shape[1],
        )

    if backend is None:
        return run()
    with sdpa_kernel([backend]):
        return run()


def bench_prefill(bench: Bench) -> None:
    args = bench.args
    tokens = (16, 48) if args.smoke else (128, 512, 1000, 2000)
    batches = (1, 2) if args.smoke else (1, 8)
    heads = {"tiny": (4, 2, 16)} if args.smoke else HEADS
    table = []
    for name, (hq, hkv, d) in heads.items():
        for b in batches:
            for t in tokens:
                scale = 1 / math.sqrt(d)
                q = randn(b, t, hq, d, b=bench)
                k, v = randn(b, hkv, t, d, b=bench), randn(b, hkv, t, d, b=bench)
                start = torch.zeros(b, dtype=torch.int32, device=bench.device)
                lengths = torch.full((b,), t, dtype=torch.int32, device=bench.device)
                params = {"heads": name, "B": b, "T": t, "dtype": args.dtype}
                want = prefill_attention_ref(q, k, v, start, lengths, scale=scale, upcast=True)
                got = prefill_attention_triton(q, k, v, start, lengths, scale=scale)
                err = (got.float() - want.float()).abs().max().item()
                flops = 4 * b * hq * d * t * (t + 1) / 2
                providers = {
                    "triton": partial(
                        prefill_attention_triton, q, k, v, start, lengths, scale=scale
                    )
                }
                if not args.smoke:
                    for p, backend in sdpa_providers().items():
                        providers[p] = partial(sdpa_call, q, k, v, backend, scale)
                for provider, fn in providers.items():
                    try:
                        tm = bench.time(fn)
                    except Exception as exc:  # noqa: BLE001 - a backend may reject the shape
                        table.append({**params, "provider": provider, "note": type(exc).__name__})
                        continue
                    tflops = flops / (tm["p50"] * 1e-3) / 1e12
                    bench.record("prefill_attention", provider, params, tm, tflops=tflops)
                    table.append(
                        {
                            **params,
                            "provider": provider,
                            "p50": tm["p50"],
                            "x30 layers ms": SMOLLM2_LAYERS * tm["p50"],
                            "tflops": tflops,
                            **({"max_err": err} if provider == "triton" else {}),
                        }
                    )
    columns = ["heads", "B", "T", "provider", "p50", "x30 layers ms", "tflops", "max_err", "note"]
    print_table(table, columns, title="prefill attention, one layer (ms)")
    print()
    bench_new_lengths(bench)


def prefill_calls(fixed: tuple, kv: list, cfg: dict) -> list:
    """One prefill_attention call per K/V copy (q, start, lengths, segment_start fixed)."""
    q, start, lengths, seg = fixed
    return [partial(prefill_attention_triton, q, k, v, start, lengths, seg, **cfg) for k, v in kv]


def bench_prefill_tiles(bench: Bench) -> None:
    """The prefill kernel's tiles (block_m x block_n x warps x stages) on admissions as the engine
    makes them (SmolLM2 heads): one prompt of T tokens, and packed rows of several prompts; each
    timed as LAYER_COPIES calls on distinct K/V in one CUDA graph, against the default's choice."""
    hq, hkv, d = (4, 2, 16) if bench.args.smoke else HEADS["smollm2"]
    # (label, B, T, prompts per row): B=1 admissions, then packed refills of 4 and 16 prompts
    cases = (
        [("T=48", 1, 48, 1)]
        if bench.args.smoke
        else [(f"T={t}", 1, t, 1) for t in (100, 500, 1000, 2000)]
        + [("4x500 packed", 1, 2000, 4), ("16x250 packed", 1, 4000, 16), ("B=8 T=512", 8, 512, 1)]
        + [("32x256 packed", 1, 8192, 32), ("64x256 packed", 1, 16384, 64)]
    )
    blocks = (16,) if bench.args.smoke else (32, 64, 128)
    variants = ((4, 1),) if bench.args.smoke else ((4, 2), (4, 3), (8, 2), (8, 3))
    table = []
    for label, b, t, prompts in cases:
        q = randn(b, t, hq, d, b=bench)
        copies = 1 if bench.args.smoke else LAYER_COPIES
        kv = [(randn(b, hkv, t, d, b=bench), randn(b, hkv, t, d, b=bench)) for _ in range(copies)]
        start = torch.zeros(b, dtype=torch.int32, device=bench.device)
        lengths = torch.full((b,), t, dtype=torch.int32, device=bench.device)
        seg = None
        if prompts > 1:
            each = t // prompts
            pos = torch.arange(t, device=bench.device, dtype=torch.int32)
            seg = (pos // each * each)[None, :].expand(b, t).contiguous()

        fixed = (q, start, lengths, seg)
        default = prefill_default(b, t, hq, hkv, d, q.device)
        times = {}
        for bm in blocks:
            for bn in blocks:
                for w, st in variants:
                    cfg = dict(block_m=bm, block_n=bn, num_warps=w, num_stages=st)
                    try:
                        tm = bench.time_graph(prefill_calls(fixed, kv, cfg))
                    except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
                        print(f"  skip {label} {cfg}: {type(exc).__name__}")
                        continue
                    times[(bm, bn, w, st)] = tm["p50"] * 1e3
                    params = {"heads": "smollm2", "case": label, "B": b, "T": t,
                              "prompts": prompts, "config": [bm, bn, w, st]}  # fmt: skip
                    bench.record("prefill_tiles", "triton", params, tm)
        best = min(times, key=times.get)
        table.append({"case": label, "default": default, "default us": times.get(default),
                      "best": best, "best us": times[best]})  # fmt: skip
    print_table(table, ["case", "default", "default us", "best", "best us"],
                title="prefill attention tiles, one layer (us, in-graph)")  # fmt: skip
    print()


def bench_new_lengths(bench: Bench) -> None:
    """Per-call wall clock over 40 prompt lengths never seen before by the provider (each provider
    gets its own lengths, so no plan cache helps): what a server admitting new prompts pays."""
    args = bench.args
    hq, hkv, d = (4, 2, 16) if args.smoke else HEADS["smollm2"]
    count = 4 if args.smoke else 40
    providers = {"triton": None}
    if not args.smoke:
        providers.update(sdpa_providers())
        providers.pop("sdpa-math")  # no planning; slow at 1,500 tokens, says nothing new
    table = []
    for index, provider in enumerate(providers):
        lengths = [50 + 36 * i + index for i in range(count)]  # 50 .. ~1,450, distinct per provider
        inputs = []
        for t in lengths:
            q = randn(1, t, hq, d, b=bench)
            k, v = randn(1, hkv, t, d, b=bench), randn(1, hkv, t, d, b=bench)
            start = torch.zeros(1, dtype=torch.int32, device=bench.device)
            length = torch.full((1,), t, dtype=torch.int32, device=bench.device)
            inputs.append((q, k, v, start, length))
        backend = providers[provider]
        if provider == "triton":  # compile once, at a length outside the measured set
            q, k, v, start, _ = inputs[0]
            seven = torch.full((1,), 7, dtype=torch.int32, device=bench.device)
            prefill_attention_triton(q[:, :7].contiguous(), k, v, start, seven)
        elapsed = []
        try:
            for q, k, v, start, lens in inputs:
                sync(bench)
                t0 = time.perf_counter()
                if provider == "triton":
                    prefill_attention_triton(q, k, v, start, lens)
                else:
                    sdpa_call(q, k, v, backend, 1 / math.sqrt(d))
                sync(bench)
                elapsed.append((time.perf_counter() - t0) * 1e3)
        except Exception as exc:  # noqa: BLE001
            table.append({"provider": provider, "note": type(exc).__name__})
            continue
        mean = sum(elapsed) / len(elapsed)
        tm = {"p50": sorted(elapsed)[len(elapsed) // 2], "mean": mean, "max": max(elapsed)}
        bench.record("prefill_new_lengths", provider, {"heads": "smollm2", "B": 1,
                     "lengths": [lengths[0], lengths[-1]], "count": count}, tm)  # fmt: skip
        table.append({"provider": provider, **tm, "x30 layers ms": SMOLLM2_LAYERS * mean})
    print_table(table, ["provider", "mean", "p50", "max", "x30 layers ms", "note"],
                title=f"prefill over {count} new lengths, B=1, wall ms per call")  # fmt: skip
    print()


def sync(bench: Bench) -> None:
    if bench.device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ tree attention
def ragged_lengths(b: int, ctx: int) -> list[int]:
    """A batch of mixed prefixes, the longest `ctx` (as in serving: a few long prompts among
    short ones): ctx * u^2 for u spread over [0, 1) (mean ~ctx / 3), the first sequence ctx."""
    return [ctx] + [max(1, int(ctx * ((i * 0.6180339887) % 1.0) ** 2)) for i in range(1, b)]


def tree_inputs(bench: Bench, b: int, n: int, heads: tuple[int, int, int], ctx: int):
    """Random q, K/V and a chain tree; every prefix `ctx` long, or with --ragged ragged_lengths."""
    hq, hkv, d = heads
    max_len = ctx + n
    q = randn(b, n, hq, d, b=bench)
    k, v = randn(b, hkv, max_len, d, b=bench), randn(b, hkv, max_len, d, b=bench)
    lengths = ragged_lengths(b, ctx) if bench.args.ragged else [ctx] * b
    cache_len = torch.tensor(lengths, dtype=torch.int32, device=bench.device)
    chain = torch.tril(torch.ones(n, n, dtype=torch.bool, device=bench.device))
    return q, k, v, cache_len, chain.expand(b, n, n).contiguous()


def heads_arg(text: str) -> str:
    """--heads: a known name, or "HQ,HKV,D" (any model's q heads, kv heads, head dim), added to
    HEADS under that name."""
    if text in HEADS:
        return text
    try:
        hq, hkv, d = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected one of {sorted(HEADS)} or HQ,HKV,D (e.g. 14,2,64)"
        ) from None
    if min(hq, hkv, d) < 1 or hq % hkv:
        raise argparse.ArgumentTypeError(f"{text!r}: need positive sizes, HQ a multiple of HKV")
    HEADS[text] = (hq, hkv, d)
    return text


def geometries(args) -> list[tuple[str, int, int]]:
    """(heads, B, N) of the sweep; B * N capped where the grid is large enough anyway (Llama-7B's
    32 kv heads of 128: at 1,024)."""
    if args.smoke:
        return [("tiny", 1, 1), ("tiny", 2, 4)]
    out = []
    for name in args.heads or ("smollm2", "llama7b"):
        big = HEADS[name][1] * HEADS[name][2] >= 32 * 128
        for b in BATCH_BUCKETS:
            for n in NODE_BUCKETS:
                if b * n <= (1024 if big else 2048) and not (big and b == 256):
                    out.append((name, b, n))
    if args.quick:
        out = [g for g in out if g[1] in (1, 64) or g[2] == 1]
    if args.batches:
        out = [g for g in out if g[1] in args.batches]
    if args.nodes:
        out = [g for g in out if g[2] in args.nodes]
    return out


def heads_of(name: str) -> tuple[int, int, int]:
    return (4, 2, 16) if name == "tiny" else HEADS[name]


class TreeSweep:
    """Times configurations of one geometry at the three contexts; remembers everything."""

    def __init__(self, bench: Bench, name: str, b: int, n: int, contexts: tuple[int, ...]):
        self.bench, self.name, self.b, self.n = bench, name, b, n
        self.heads = heads_of(name)
        self.inputs = {ctx: tree_inputs(bench, b, n, self.heads, ctx) for ctx in contexts}
        # distinct K/V per "layer" so the graph-timed calls do not read from a warm L2
        copies = 1 if bench.args.smoke else LAYER_COPIES
        self.layers = {
            ctx: [(k.clone(), v.clone()) for _ in range(copies) for k, v in [inputs[1:3]]]
            for ctx, inputs in self.inputs.items()
        }
        self.times: dict[tuple, dict[int, float]] = {}
        # What the runner launches: the RoPE variant, from QKV rows (random: timing only)
        hq, hkv, d = self.heads
        self.rope = {
            ctx: (
                randn(b, n, (hq + 2 * hkv) * d, b=bench),
                torch.rand(b, n, d // 2, device=bench.device),
                torch.rand(b, n, d // 2, device=bench.device),
            )
            for ctx in contexts
        }

    def calls(self, ctx: int, **config) -> list:
        """One fused RoPE + tree attention call per K/V copy, as the verify step launches it."""
        _, _, _, cache_len, mask = self.inputs[ctx]
        qkv, cos, sin = self.rope[ctx]
        out = torch.empty_like(self.inputs[ctx][0])
        hq = self.heads[0]
        return [
            partial(
                rope_tree_attention_triton,
                qkv,
                cos,
                sin,
                cache_len,
                k,
                v,
                cache_len,
                mask,
                num_q_heads=hq,
                out=out,
                **config,
            )  # fmt: skip
            for k, v in self.layers[ctx]
        ]

    def kv_bytes(self, ctx: int) -> int:
        hq, hkv, d = self.heads
        keys = int(self.inputs[ctx][3].sum()) + self.b * self.n
        return 2 * hkv * keys * d * self.bench.dtype.itemsize

    def run(self, cfg: tuple[int, int, int, int, int], ctx: int) -> float | None:
        if ctx in self.times.get(cfg, {}):
            return self.times[cfg][ctx]
        bm, bn, splits, warps, stages = cfg
        fns = self.calls(ctx, block_m=bm, block_n=bn, num_splits=splits, num_warps=warps,
                         num_stages=stages)  # fmt: skip
        try:
            tm = self.bench.time_graph(fns)
        except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory for a config
            print(f"  skip {self.name} B={self.b} N={self.n} ctx={ctx} {cfg}: {type(exc).__name__}")
            self.times.setdefault(cfg, {})[ctx] = None
            return None
        params = {"heads": self.name, "B": self.b, "N": self.n, "ctx": ctx, "dtype":
                  self.bench.args.dtype, "ragged": self.bench.args.ragged,
                  "config": list(cfg)}  # fmt: skip
        gbps = self.kv_bytes(ctx) / (tm["p50"] * 1e-3) / 1e9
        self.bench.record("tree_attention_sweep", "triton", params, tm, gbps=gbps)
        self.times.setdefault(cfg, {})[ctx] = tm["p50"]
        return tm["p50"]


def split_candidates(programs: int, ctx: int, block_n: int, sms: int, quick: bool) -> list[int]:
    """Powers of two up to ~16 programs per SM, each split keeping >= 1 key block; with --quick
    every other one (and the largest)."""
    out = []
    for s in (1, 2, 4, 8, 16, 32, 64):
        if s > 1 and (programs * s > 16 * sms or ctx < s * block_n):
            break
        out.append(s)
    if quick:
        out = sorted(set(out[::2] + out[-1:]))
    return out


def sweep_geometry(bench: Bench, name: str, b: int, n: int) -> dict:
    args = bench.args
    contexts = (32, 64) if args.smoke else (512, 1024, 2048)
    mid = contexts[len(contexts) // 2]
    sweep = TreeSweep(bench, name, b, n, contexts)
    hq, hkv, d = sweep.heads
    rows = (hq // hkv) * n
    base = default_config(b, n, hq, hkv, d, mid + n, torch.device(bench.device))
    bm = min(base.block_m, max(16, 1 << (rows - 1).bit_length()))
    warps = 4 if bm <= 64 else 8
    block_ns = [16] if args.smoke else ([32, 64, 128] if d <= 64 and bm <= 64 else [32, 64])
    # (1) block_n x num_splits at the middle context
    programs = b * hkv * -(-rows // bm)
    for bn in block_ns:
        for s in split_candidates(programs, mid, bn, bench.sms, args.quick):
            sweep.run((bm, bn, s, warps, 3), mid)
    ranked = sorted((t[mid], c) for c, t in sweep.times.items() if t.get(mid) is not None)
    best = ranked[0][1]
    # (2) warps x stages, and smaller row blocks for big trees, around the best; --wide: every
    # block_n x warps x stages at the best split (fewer warps: more programs resident per SM)
    variants = [(4, 2), (4, 4), (8, 3)] if not args.smoke else [(2, 1)]
    for w, st in variants:
        sweep.run((best[0], best[1], best[2], w, st), mid)
    if args.wide and not args.smoke:
        for bn in block_ns:
            for w in (1, 2, 4):
                for st in (2, 3, 4, 5):
                    sweep.run((best[0], bn, best[2], w, st), mid)
    if bm >= 128:
        for smaller in (bm // 2, bm // 4):
            sweep.run((smaller, best[1], best[2], 4 if smaller <= 64 else 8, 3), mid)
    ranked = sorted((t[mid], c) for c, t in sweep.times.items() if t.get(mid) is not None)
    # (3) the top configurations and the best's split neighbours at the other contexts
    best = ranked[0][1]
    finalists = {c for _, c in ranked[:3]}
    for s in (best[2] // 2, best[2] * 2):
        if 1 <= s <= 64:
            finalists.add((best[0], best[1], s, best[3], best[4]))
    for cfg in finalists:
        for ctx in contexts:
            sweep.run(cfg, ctx)
    complete = {c: t for c, t in sweep.times.items() if all(t.get(x) for x in contexts)}
    fastest = {ctx: min(t[ctx] for t in complete.values()) for ctx in contexts}
    winner = min(complete, key=lambda c: sum(complete[c][x] / fastest[x] for x in contexts))
    # The heuristic default (what runs without a table entry), at every context.
    heuristic = {}
    for ctx in contexts:
        tm = bench.time_graph(sweep.calls(ctx))
        heuristic[ctx] = tm["p50"]
        params = {"heads": name, "B": b, "N": n, "ctx": ctx, "dtype": args.dtype,
                  "ragged": args.ragged}  # fmt: skip
        bench.record("tree_attention", "triton-default", params, tm,
                     gbps=sweep.kv_bytes(ctx) / (tm["p50"] * 1e-3) / 1e9)  # fmt: skip
        tm = {"p50": complete[winner][ctx]}
        bench.record("tree_attention", "triton-best", {**params, "config": list(winner)}, tm,
                     gbps=sweep.kv_bytes(ctx) / (tm["p50"] * 1e-3) / 1e9)  # fmt: skip
    # Accuracy of the winner against the fp32 reference at the middle context.
    q, k, v, cache_len, mask = sweep.inputs[mid]
    bm_, bn_, s_, w_, st_ = winner
    got = tree_attention_triton(q, k, v, cache_len, mask, block_m=bm_, block_n=bn_,
                                num_splits=s_, num_warps=w_, num_stages=st_)  # fmt: skip
    want = tree_attention_ref(q, k, v, cache_len, mask, upcast=True)
    err = (got.float() - want.float()).abs().max().item()
    result = {"heads": name, "B": b, "N": n, "best": winner, "max_err": err,
              "tested": len(sweep.times), "inputs": sweep.inputs[mid]}  # fmt: skip
    for ctx in contexts:
        t = complete[winner][ctx]
        result[f"us@{ctx}"] = t * 1e3
        result[f"GB/s@{ctx}"] = sweep.kv_bytes(ctx) / (t * 1e-3) / 1e9
        result[f"default us@{ctx}"] = heuristic[ctx] * 1e3
    return result


def write_tuning(results: list[dict]) -> None:
    """Merge this card's best configurations into kernels/tuned/tree_attention.json (what
    tree_attention's defaults read), keyed by the card's name. Called after each geometry, so that
    a sweep cut short (a time limit) keeps what it finished."""
    card = torch.cuda.get_device_name()
    table = json.loads(TUNING_FILE.read_text()) if TUNING_FILE.is_file() else {}
    entries = table.setdefault(card, {})
    for r in results:
        if r["heads"] in HEADS:
            hq, hkv, d = HEADS[r["heads"]]
            entries[tuning_key(hq, hkv, d, r["N"], r["B"])] = list(r["best"])
    TUNING_FILE.parent.mkdir(parents=True, exist_ok=True)
    TUNING_FILE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(results)} configurations for {card} to {TUNING_FILE}")


def bench_tree(bench: Bench) -> list[dict]:
    results = []
    start = time.perf_counter()
    for name, b, n in geometries(bench.args):
        results.append(sweep_geometry(bench, name, b, n))
        r = results[-1]
        print(f"  {name} B={b} N={n}: best {r['best']} ({r['tested']} timed, "
              f"{time.perf_counter() - start:.0f}s)", flush=True)  # fmt: skip
        bench.flush()  # (its records and table entry saved now: a sweep may be cut short)
        if bench.args.write_tuning and not bench.args.smoke:
            write_tuning([r])
    mid = 64 if bench.args.smoke else 1024
    cols = ["heads", "B", "N", "best"]
    for ctx in (32, 64) if bench.args.smoke else (512, 1024, 2048):
        cols += [f"us@{ctx}", f"GB/s@{ctx}"]
    cols += [f"default us@{mid}", "max_err"]
    table = [{**r, "best": "m{}-n{}-s{}-w{}-st{}".format(*r["best"])} for r in results]
    print_table(
        table, cols, title=f"tree_attention: best configuration per geometry ({bench.args.dtype})"
    )
    return results


# ----------------------------------------------------------------------------------- exact mode
def bench_exact(bench: Bench, tree_results: list[dict]) -> None:
    args = bench.args
    table = []
    cases = tree_results or [
        {"heads": name, "B": b, "N": n, "best": None} for name, b, n in geometries(args)
    ]
    ctx = 64 if args.smoke else 1024
    for r in cases:
        name, b, n = r["heads"], r["B"], r["N"]
        hq, hkv, d = heads_of(name)
        q, k, v, cache_len, mask = r.get("inputs") or tree_inputs(bench, b, n, heads_of(name), ctx)
        out = torch.empty_like(q)
        plan = exact_tree_plan(cache_len, mask)
        params = {"heads": name, "B": b, "N": n, "ctx": ctx, "dtype": args.dtype}
        if r["best"] is not None:
            bm, bn, s, w, st = r["best"]
            fast = {"block_m": bm, "block_n": bn, "num_splits": s, "num_warps": w,
                    "num_stages": st}  # fmt: skip
        else:
            fast = {}
        inputs = (q, k, v, cache_len, mask)
        providers = {
            "fast": partial(tree_attention_triton, *inputs, out=out, **fast),
            "exact": partial(exact_attention_triton, *inputs, out=out, plan=plan),
            "exact-tc": partial(
                exact_attention_triton, *inputs, out=out, plan=plan, tensor_cores=True
            ),
            "exact+plan": partial(exact_attention_triton, *inputs, out=out),
        }
        if args.smoke or bench.dtype == torch.float32:
            providers.pop("exact-tc")  # fp32 IEEE dots: minutes of compile, not the target
        row = {**params}
        for provider, fn in providers.items():
            tm = bench.time(fn)
            bench.record("exact_attention", provider, params, tm)
            row[f"{provider} us"] = tm["p50"] * 1e3
        row["exact / fast"] = row["exact us"] / row["fast us"]
        if "exact-tc us" in row:
            row["exact-tc / fast"] = row["exact-tc us"] / row["fast us"]
        table.append(row)
    columns = ["heads", "B", "N", "ctx", "fast us", "exact us", "exact-tc us", "exact+plan us",
               "exact / fast", "exact-tc / fast"]  # fmt: skip
    title = (
        f"exact_attention vs fast tree_attention, context {ctx}, one layer (exact+plan: the plan "
        "computed in the call; the runner computes one per step for all layers)"
    )
    print_table(table, columns, title=title)
    print()


# ---------------------------------------------------------------------------------- invariance
class World:
    """One query and its logical keys/values, embedded into many batches (as in the tests)."""

    def __init__(self, bench: Bench, dtype: torch.dtype, ctx: int, heads, seed: int = 0):
        self.hq, self.hkv, self.d = heads
        self.ctx, self.dtype, self.device = ctx, dtype, bench.device
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.k = torch.randn(self.hkv, ctx + 1, self.d, generator=g).to(dtype)
        self.v = torch.randn(self.hkv, ctx + 1, self.d, generator=g).to(dtype)
        self.q = torch.randn(self.hq, self.d, generator=g).to(dtype)
        self.g = torch.Generator(device="cpu").manual_seed(seed + 1)

    def noise(self, *shape):
        return torch.randn(*shape, generator=self.g).to(self.dtype)

    def tree(self, b, slot, parents, target, max_len):
        n = len(parents)
        path, j = [], target
        while j >= 0:
            path.append(j)
            j = parents[j]
        path.reverse()
        cache_len = self.ctx + 1 - len(path)
        q = self.noise(b, n, self.hq, self.d)
        k, v = self.noise(b, self.hkv, max_len, self.d), self.noise(b, self.hkv, max_len, self.d)
        lens = torch.randint(0, max_len - n + 1, (b,), generator=self.g).to(torch.int32)
        lens[slot] = cache_len
        q[slot, target] = self.q
        k[slot, :, :cache_len], v[slot, :, :cache_len] = (
            self.k[:, :cache_len],
            self.v[:, :cache_len],
        )
        for depth, node in enumerate(path):
            k[slot, :, cache_len + node] = self.k[:, cache_len + depth]
            v[slot, :, cache_len + node] = self.v[:, cache_len + depth]
        mask = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            j = i
            while j >= 0:
                mask[i, j] = True
                j = parents[j]
        inputs = (q, k, v, lens, mask.expand(b, n, n).contiguous())
        return [x.to(self.device) for x in inputs]

    def prefill(self, b, slot, start, t, max_len):
        q = self.noise(b, t, self.hq, self.d)
        k, v = self.noise(b, self.hkv, max_len, self.d), self.noise(b, self.hkv, max_len, self.d)
        starts = torch.randint(0, max_len - t + 1, (b,), generator=self.g).to(torch.int32)
        lens = torch.randint(0, t + 1, (b,), generator=self.g).to(torch.int32)
        starts[slot], lens[slot] = start, t
        q[slot, self.ctx - start] = self.q
        k[slot, :, : self.ctx + 1], v[slot, :, : self.ctx + 1] = self.k, self.v
        return [x.to(self.device) for x in (q, k, v, starts, lens)]


def random_tree(n: int, g: torch.Generator) -> list[int]:
    return [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]


class Probe:
    """Runs the exact kernel on a World embedded in a batch; returns the target row (fp32, CPU)."""

    def __init__(self, world: World, cap: int, **kw):
        self.world, self.cap, self.kw = world, cap, kw

    def tree(self, b, slot, parents, target, max_len=None, **extra) -> torch.Tensor:
        inputs = self.world.tree(b, slot, parents, target, max_len or self.cap)
        out = exact_attention_triton(*inputs, **{**self.kw, **extra})
        return out[slot, target].float().cpu()

    def prefill(self, b, slot, start, t) -> torch.Tensor:
        inputs = self.world.prefill(b, slot, start, t, self.cap)
        out = exact_prefill_attention_triton(*inputs, **self.kw)
        return out[slot, self.world.ctx - start].float().cpu()


def bench_invariance(bench: Bench) -> None:
    args = bench.args
    heads = (4, 2, 16) if args.smoke else HEADS["smollm2"]
    ctx = 40 if args.smoke else 700
    cap = ctx + 96
    g = torch.Generator().manual_seed(5)
    tree7 = [-1, 0, 0, 1, 1, 2, 4]  # node 6 at depth 3
    tree16, tree81 = random_tree(16, g), random_tree(81, g)
    deep81 = max(range(81), key=lambda i: (depth_of(tree81, i), i))
    d16, d81 = depth_of(tree16, 15), depth_of(tree81, deep81)
    variants = [("fp32", torch.float32, False), ("bf16", torch.bfloat16, False)]
    if not args.smoke:
        variants.append(("bf16-tc", torch.bfloat16, True))
    big = 4 if args.smoke else 64
    b16, b81 = (3, 2) if args.smoke else (16, 8)
    table = []
    for label, dtype, tensor_cores in variants:
        world = World(bench, dtype, ctx, heads)
        kw = {"scale": 1 / math.sqrt(heads[2]), "tensor_cores": tensor_cores}
        if args.smoke:  # the tiny context still crosses blocks and splits
            kw.update(split_tokens=16, block_n=16)
        probe = Probe(world, cap, **kw)
        want = probe.tree(1, 0, [-1], 0)
        chunk = (ctx - 10, 16) if args.smoke else (ctx - 200, 256)
        cases = {
            "decode B=3 slot 2": probe.tree(3, 2, [-1], 0),
            f"decode B={big} slot {big - 3}, other capacity": probe.tree(
                big, big - 3, [-1], 0, max_len=cap + 200
            ),
            "chain N=7 depth 6, B=8 slot 5": probe.tree(8, 5, list(range(-1, 6)), 6),
            "tree N=7 depth 3, B=3 slot 1": probe.tree(3, 1, tree7, 6),
            f"tree N=16 depth {d16}, B={b16} slot {b16 - 1}": probe.tree(b16, b16 - 1, tree16, 15),
            f"tree N=81 depth {d81}, B={b81} slot 1": probe.tree(b81, 1, tree81, deep81),
            "prefill whole prompt, B=1": probe.prefill(1, 0, 0, ctx + 1),
            f"prefill chunk from {chunk[0]}, B=4 slot 2": probe.prefill(4, 2, *chunk),
        }
        pairs = {case: (want, got) for case, got in cases.items()}
        # Negative controls, pairs that must differ: in fp32 only (a bf16 output usually rounds
        # a reordering's ~1e-7 relative change away, so there equality proves nothing).
        if dtype == torch.float32:
            split = 48 if args.smoke else 128
            pairs["CONTROL split size following B (must differ)"] = (
                want,
                probe.tree(3, 1, [-1], 0, split_tokens=split),
            )
            fast = fast_control(world, tree7, 6, cap)
            pairs["CONTROL fast kernel, blocks restart at cache_len (must differ)"] = fast
        for case, (a, b_) in pairs.items():
            same = torch.equal(a, b_)
            diff = (a - b_).abs().max().item()
            table.append(
                {"variant": label, "case": case, "bit-identical": same, "max |diff|": diff}
            )
            bench.rows.append(
                {
                    "bench": "exact_invariance",
                    "provider": label,
                    "params": {"case": case, "ctx": ctx},
                    "metric": "identical",
                    "unit": "bool",
                    "value": same,
                    "max_abs_diff": diff,
                }
            )
    title = (
        f"exact_attention bitwise invariance on this device (SmolLM2 heads, the query at logical "
        f"position {ctx}; reference: the query decoded alone, B=1)"
    )
    print_table(table, ["variant", "case", "bit-identical", "max |diff|"], title=title)
    failed = [r for r in table if not r["case"].startswith("CONTROL") and not r["bit-identical"]]
    weak = [r for r in table if r["case"].startswith("CONTROL") and r["bit-identical"]]
    checks = sum(not r["case"].startswith("CONTROL") for r in table)
    verdict = (
        "ALL PASS"
        if not failed
        else f"{len(failed)} FAILED: " + "; ".join(f"{r['variant']} {r['case']}" for r in failed)
    )
    print(f"\ninvariance: {verdict} ({checks} checks)")
    if weak:  # a control that happens to round to the same bits shows nothing either way
        print("controls that did not differ (inconclusive, not a kernel failure): "
              + "; ".join(r["case"] for r in weak))  # fmt: skip
    print()


def depth_of(parents: list[int], node: int) -> int:
    depth = 0
    while parents[node] >= 0:
        node, depth = parents[node], depth + 1
    return depth


def fast_control(world: World, parents, target, cap):
    """The fast kernel on the tree vs on the token decoded alone: (tree row, alone row)."""
    tree = tree_attention_triton(*world.tree(1, 0, parents, target, cap))[0, target]
    alone = tree_attention_triton(*world.tree(1, 0, [-1], 0, cap))[0, 0]
    return tree.float().cpu(), alone.float().cpu()


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sections = ["prefill", "prefill-tiles", "tree", "exact", "invariance"]
    ap.add_argument("--sections", nargs="+", default=["prefill", "tree", "exact", "invariance"],
                    choices=sections)  # fmt: skip
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--quick", action="store_true", help="fewer geometries and configurations")
    ap.add_argument("--rep-ms", type=int, default=20, help="do_bench measuring time per point")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes in the CPU interpreter")
    ap.add_argument("--heads", nargs="+", type=heads_arg,
                    help="tree sweep: only these: smollm2, llama7b, or HQ,HKV,D of any model "
                    "(e.g. 14,2,64)")  # fmt: skip
    ap.add_argument("--batches", nargs="+", type=int, help="tree sweep: only these batch sizes")
    ap.add_argument("--nodes", nargs="+", type=int, help="tree sweep: only these node buckets")
    ap.add_argument(
        "--ragged",
        action="store_true",
        help="tree sweep: mixed prefixes per batch, the longest the context (ragged_lengths)",
    )
    ap.add_argument(
        "--wide", action="store_true", help="tree sweep: every block_n x warps (1-4) x stages (2-5)"
    )
    ap.add_argument(
        "--write-tuning",
        action="store_true",
        help="merge the tree sweep's best configurations into kernels/tuned/tree_attention.json",
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.dtype = "fp32"
    elif not torch.cuda.is_available():
        ap.error("needs a CUDA device (or --smoke)")
    if "tree" in args.sections and not geometries(args):
        ap.error("the tree sweep has no geometry: --heads / --batches / --nodes select none")
    bench = Bench(args)
    print(hardware_line())
    t0 = time.perf_counter()
    tree_results: list[dict] = []
    for section in args.sections:
        start = time.perf_counter()
        if section == "prefill":
            bench_prefill(bench)
        elif section == "prefill-tiles":
            bench_prefill_tiles(bench)
        elif section == "tree":
            tree_results = bench_tree(bench)
        elif section == "exact":
            bench_exact(bench, tree_results)
        elif section == "invariance":
            bench_invariance(bench)
        print(f"[{section}: {time.perf_counter() - start:.0f}s]\n", flush=True)
        bench.flush()
    print(f"total {time.perf_counter() - t0:.0f}s; {hardware_line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
