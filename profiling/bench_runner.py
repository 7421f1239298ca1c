"""Model runtime on the GPU: tree-attention kernel vs its SDPA reference, and one verify forward
(`LlamaRunner.forward_tree`) vs the number of tree nodes N -- the t(N) of DESIGN.md §7's cost model.

    python -m profiling.bench_runner [--models smollm2 llama7b] [--batch 1 8 32]
        [--nodes 1 2 4 8 16 32 64 80] [--cache-len 512] [--dtype bf16] [--smoke]

Measured (median ms; p20-p80 in the JSONL):
- tree_attention (bench "tree_attention"): one layer's verify attention, Triton vs the SDPA
  reference ([B, N, L] mask over all L slots), SmolLM2 heads (9 q / 3 kv, D 64) and Llama-7B heads
  (32 / 32, D 128); GB/s counts the K/V bytes the kernel must read (prefix + tree).
- runner_forward (bench "runner_forward"): one whole forward_tree (all layers + lm_head) on a chain
  of N nodes with cache_len prompt tokens in the cache, eager and replayed from a CUDA graph
  (provider "graph"; what the decode loop runs). The first call runs under
  torch.cuda.set_sync_debug_mode("error") to prove the step makes no host sync.
- prefill (bench "prefill"): the prompt's forward (cache_len tokens per sequence).
Models: the embedded SmolLM2-135M (samgpu.models.load_default) and a random-weight Llama-2-7B-shaped
model (4096 hidden, 32 layers, 32 heads, 11008 MLP, 32000 vocab; weights only matter for time).
--smoke runs a tiny random Llama on the CPU (eager, 2 sizes) to check the script.
"""

from __future__ import annotations

import argparse
import functools

import torch

from samgpu.decoding.runners.llama import LlamaRunner
from samgpu.kernels.tree_attention import tree_attention_ref, tree_attention_triton

try:
    from profiling.common import (
        bench_cpu,
        bench_gpu,
        hardware_line,
        llama2_7b_config,
        print_table,
        random_model,
        write_jsonl,
    )
except ImportError:  # run as `python profiling/bench_runner.py`
    from common import (
        bench_cpu,
        bench_gpu,
        hardware_line,
        llama2_7b_config,
        print_table,
        random_model,
        write_jsonl,
    )

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEADS = {"smollm2": (9, 3, 64), "llama7b": (32, 32, 128), "tiny": (4, 2, 16)}


def tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )


def load_model(name: str, device: str, dtype: torch.dtype):
    if name == "smollm2":
        from samgpu.models import load_default

        return load_default(device=device, dtype=dtype)[0]
    return random_model(llama2_7b_config() if name == "llama7b" else tiny_config(), device, dtype)


def chain_inputs(b: int, n: int, cache_len: int, vocab: int, device: str):
    tokens = torch.randint(0, vocab, (b, n), dtype=torch.int32, device=device)
    positions = cache_len + torch.arange(n, dtype=torch.int32, device=device).expand(b, n)
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool, device=device)).expand(b, n, n)
    return tokens, positions.contiguous(), mask.contiguous()


def bench_attention(args, dtype, device, rows):
    for model, (hq, hkv, d) in HEADS.items():
        if model not in args.models:
            continue
        for b in args.batch:
            for n in args.nodes:
                max_len = args.cache_len + n
                q = torch.randn(b, n, hq, d, dtype=dtype, device=device)
                k = torch.randn(b, hkv, max_len, d, dtype=dtype, device=device)
                v = torch.randn_like(k)
                cache_len = torch.full((b,), args.cache_len, dtype=torch.int32, device=device)
                _, _, mask = chain_inputs(b, n, args.cache_len, 2, device)
                out = torch.empty_like(q)
                kv_bytes = 2 * b * hkv * (args.cache_len + n) * d * k.element_size()
                providers = [("sdpa-ref", tree_attention_ref)]
                if device == "cuda":
                    providers.insert(0, ("triton", tree_attention_triton))
                for provider, op in providers:
                    fn = functools.partial(op, q, k, v, cache_len, mask, out=out)
                    t = bench_gpu(fn) if device == "cuda" else bench_cpu(fn, rep=3)
                    rows.append(
                        {
                            "bench": "tree_attention",
                            "provider": provider,
                            "params": {
                                "heads": model,
                                "B": b,
                                "N": n,
                                "cache_len": args.cache_len,
                                "dtype": args.dtype,
                            },  # fmt: skip
                            "metric": "latency",
                            "unit": "ms",
                            **t,
                            "gbps": kv_bytes / (t["p50"] * 1e-3) / 1e9,
                        }
                    )


def capture(fn):
    """Warm up on a side stream, then capture fn in a CUDA graph; returns the graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def bench_forward(args, dtype, device, rows):
    for name in args.models:
        model = load_model(name, device, dtype)
        runner = LlamaRunner(model)
        for b in args.batch:
            max_len = args.cache_len + max(args.nodes)
            try:
                cache = runner.allocate_cache(b, max_len)
            except torch.OutOfMemoryError:
                print(f"{name}: B={b} cache does not fit, skipped")
                continue
            prompt = torch.randint(0, runner.vocab_size, (b, args.cache_len), device=device)
            lengths = torch.full((b,), args.cache_len, dtype=torch.int32, device=device)
            do_prefill = functools.partial(runner.prefill, prompt.int(), lengths, cache)
            t = bench_gpu(do_prefill) if device == "cuda" else bench_cpu(do_prefill, rep=2)
            rows.append({"bench": "prefill", "provider": "eager", "metric": "latency",
                         "unit": "ms", "params": {"model": name, "B": b, "T": args.cache_len,
                                                  "dtype": args.dtype}, **t})  # fmt: skip
            for n in args.nodes:
                tokens, positions, mask = chain_inputs(b, n, args.cache_len, runner.vocab_size,
                                                       device)  # fmt: skip
                out = torch.empty(b, n, runner.vocab_size, device=device)
                step = functools.partial(runner.forward_tree, tokens, positions, mask, cache, out)
                params = {"model": name, "B": b, "N": n, "cache_len": args.cache_len,
                          "dtype": args.dtype}  # fmt: skip
                if device == "cuda":
                    step()  # compile the kernels outside the sync check
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                    try:
                        step()
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                    graph = capture(step)
                    timings = {"eager": bench_gpu(step), "graph": bench_gpu(graph.replay)}
                else:
                    timings = {"eager": bench_cpu(step, rep=2)}
                for provider, t in timings.items():
                    rows.append({"bench": "runner_forward", "provider": provider,
                                 "metric": "latency", "unit": "ms", "params": params, **t,
                                 "tok_s": b * n / (t["p50"] * 1e-3)})  # fmt: skip
            cache = None
        runner = model = None
        if device == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "llama7b"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--nodes", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64, 80])
    ap.add_argument("--cache-len", type=int, default=512)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny model on the CPU, to check the script"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.models, args.batch, args.nodes, args.cache_len = ["tiny"], [2], [1, 4], 16
        args.dtype, device = "fp32", "cpu"
    elif not torch.cuda.is_available():
        ap.error("needs a CUDA device (or --smoke)")
    else:
        device = "cuda"
    dtype = DTYPES[args.dtype]
    rows: list[dict] = []
    bench_attention(args, dtype, device, rows)
    bench_forward(args, dtype, device, rows)
    flat = [{**r, **r["params"]} for r in rows]
    for bench, cols in (
        (
            "tree_attention",
            ["provider", "heads", "B", "N", "cache_len", "p50", "p20", "p80", "gbps"],
        ),
        (
            "runner_forward",
            ["provider", "model", "B", "N", "cache_len", "p50", "p20", "p80", "tok_s"],
        ),  # fmt: skip
        ("prefill", ["provider", "model", "B", "T", "p50", "p20", "p80"]),
    ):
        print_table([r for r in flat if r["bench"] == bench], cols, title=f"{bench} (ms)")
        print()
    print(hardware_line())
    if not args.smoke:
        print("wrote", write_jsonl(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
