"""Decode-loop runtime: our AR path vs transformers, the verify cost curve, syncs, non-model time.

    python -m profiling.bench_runtime [--quick] [--model-path PATH] [--skip-7b]
                                      [--max-new-tokens 256] [--batch 1 32] [--sections ...]
                                      [--verify-batches 1 8 64] [--verify-nodes 1 2 .. 128]

--model-path: a GGUF file (e.g. /root/models/SmolLM2-135M-Instruct.Q4_1.gguf) or a transformers
folder; default: samgpu.models.load_default (the embedded SmolLM2-135M-Instruct). bf16 on CUDA.
Sections (each a table under a hardware line; every row also a JSON record):
1. ar: tokens/s of greedy decoding, B in --batch, a fixed ~60-token prompt per sequence, exactly
   --max-new-tokens tokens (no EOS): samgpu's loop with the `ar` drafter and CUDA graphs, vs
   transformers `generate` with its default dynamic cache and with cache_implementation="static".
   Warm-up runs (Triton compilation, graph capture, torch.compile) are excluded.
2. verify: time of one verify forward (runner.forward_tree captured in a CUDA graph, timed by
   replays) over N tree nodes (a chain) after a 256-token prefix, N in 1, 2, 4, ..., 128 and
   B in 1, 8, 64, for the model and for a random-weight Llama-2-7B-shaped model (bf16; --skip-7b
   to leave it out; section `verify7b` runs it alone). t(N) / t(1) is the cost model's denominator
   (DESIGN.md section 7).
3. syncs: host synchronisations per decode step, counted under
   torch.cuda.set_sync_debug_mode("warn") over 8 steps (eager and graph replays, greedy and
   sampling), with a 9-node draft tree. Target 0.
4. non-model: the decode step without the model and the drafter (tree_mask, greedy verify
   incl. the argmax over V, kv_compact over all layers, commit) for the model's shapes, at B=1 and
   B=64, N in 16 and 64: each kernel by do_bench, and all four captured in ONE CUDA graph
   ("pipeline", the per-step cost in the loop). Target (with match + draft): <= 50 µs at B=1,
   <= 150 µs at B=64 on H100. Also `profile_stages` of the loop (per-stage CUDA events, eager).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

try:
    from profiling.common import (
        bench_gpu,
        hardware_line,
        llama2_7b_config,
        print_table,
        random_model,
        write_jsonl,
    )
except ImportError:  # run as `python profiling/bench_runtime.py`
    from common import (
        bench_gpu,
        hardware_line,
        llama2_7b_config,
        print_table,
        random_model,
        write_jsonl,
    )

PROMPT = (
    "You are a helpful assistant. Explain in a few paragraphs how a suffix automaton can be used "
    "to speed up text generation with a language model, and give a small worked example with a "
    "short string, then discuss the memory cost of the data structure."
)
PREFIX = 256  # tokens in the cache before the verified tree (verify curve)


def load_model(path: str | None, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is None:
        from samgpu.models import load_default

        return load_default(device=device, dtype=dtype)
    p = Path(path).expanduser()
    if p.suffix == ".gguf":
        kw = dict(gguf_file=p.name)
        tok = AutoTokenizer.from_pretrained(p.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(p.parent, dtype=dtype, **kw)
    else:
        tok = AutoTokenizer.from_pretrained(p)
        model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype)
    return model.to(device).eval(), tok


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- 1. AR tokens/s
def bench_ar(model, tok, batches, max_new, device) -> list[dict]:
    from samgpu.decoding.config import GenerationConfig
    from samgpu.decoding.runners import make_runner
    from samgpu.factory import build_decoder

    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    runner = make_runner(model)
    rows = []
    for B in batches:
        prompts = [prompt] * B
        dec = build_decoder(runner, "ar", batch_size=B, max_len=len(prompt) + max_new + 8)
        cfg = GenerationConfig(max_new_tokens=max_new, check_every=16)
        dec.generate(prompts, GenerationConfig(max_new_tokens=32))  # warm-up, graph capture
        _sync()
        t0 = time.perf_counter()
        out = dec.generate(prompts, cfg)
        _sync()
        secs = time.perf_counter() - t0
        gen = sum(len(t) for t in out.tokens)
        rows.append(_ar_row("samgpu-ar-graphs", B, len(prompt), max_new, gen, secs))
        del dec
        ids = torch.tensor([prompt] * B, device=device)
        mask = torch.ones_like(ids)
        for cache in ("dynamic", "static"):
            kw = dict(
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                do_sample=False,
                attention_mask=mask,
                pad_token_id=tok.eos_token_id or 0,
            )
            if cache == "static":
                kw["cache_implementation"] = "static"
            try:
                with torch.no_grad():
                    model.generate(ids, **kw)  # warm-up at the same shapes (static: compile)
                    _sync()
                    t0 = time.perf_counter()
                    out_ids = model.generate(ids, **kw)
                    _sync()
                secs = time.perf_counter() - t0
                gen = (out_ids.shape[1] - ids.shape[1]) * B
                rows.append(_ar_row(f"hf-generate-{cache}", B, len(prompt), max_new, gen, secs))
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"hf-generate-{cache} B={B} failed: {type(exc).__name__}: {exc}")
    ours = {
        r["params"]["batch_size"]: r["tok_s"] for r in rows if r["provider"] == "samgpu-ar-graphs"
    }
    for r in rows:
        r["speedup_vs_ours"] = r["tok_s"] / ours[r["params"]["batch_size"]]
    return rows


def _ar_row(provider, B, prompt_len, max_new, gen, secs):
    return dict(
        bench="runtime_ar",
        provider=provider,
        params=dict(batch_size=B, prompt_len=prompt_len, max_new_tokens=max_new),
        metric="tokens_per_s",
        unit="tok/s",
        tok_s=gen / secs,
        seconds=secs,
        generated=gen,
    )


# ----------------------------------------------------------------------------- 2. verify curve
def _time_forward(runner, cache, B, N, device) -> dict:
    """forward_tree over a chain of N nodes after PREFIX cached tokens, graph-captured if the
    runner allows (as in the loop), timed by do_bench."""
    from samgpu.kernels.tree import tree_mask

    parents = torch.arange(-1, N - 1, dtype=torch.int32, device=device).repeat(B, 1)
    num_nodes = torch.full((B,), N, dtype=torch.int32, device=device)
    cache.cache_len[:B] = PREFIX
    tm = tree_mask(parents, num_nodes, cache.cache_len[:B])
    tokens = torch.randint(0, runner.vocab_size, (B, N), dtype=torch.int32, device=device)
    out = torch.empty(B, N, runner.vocab_size, dtype=torch.float32, device=device)

    def fwd():
        runner.forward_tree(tokens, tm.positions, tm.mask, cache, out)

    fwd()
    _sync()
    if not getattr(runner, "graph_safe", False):
        return bench_gpu(fwd)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fwd()
    return bench_gpu(graph.replay)


def bench_verify_curve(model, label, Ns, Bs, device) -> list[dict]:
    from samgpu.decoding.runners import make_runner

    runner = make_runner(model)
    cache = runner.allocate_cache(max(Bs), PREFIX + max(Ns) + 1)
    rows = []
    for B in Bs:
        for N in Ns:
            try:
                t = _time_forward(runner, cache, B, N, device)
            except torch.OutOfMemoryError:
                print(f"verify {label} B={B} N={N}: out of memory, skipped")
                torch.cuda.empty_cache()
                continue
            rows.append(
                dict(
                    bench="runtime_verify",
                    provider=f"samgpu-{type(runner).__name__}",
                    params=dict(model=label, batch_size=B, num_nodes=N, prefix=PREFIX),
                    metric="forward_tree_ms",
                    unit="ms",
                    **t,
                )
            )
            torch.cuda.empty_cache()
    for r in rows:
        B, N = r["params"]["batch_size"], r["params"]["num_nodes"]
        base = [
            x["p50"]
            for x in rows
            if x["params"]["batch_size"] == B and x["params"]["num_nodes"] == min(Ns)
        ]
        r["rel_to_n1"] = r["p50"] / base[0] if base else None
        r["us_per_node"] = 1e3 * r["p50"] / (B * N)
    return rows


# ----------------------------------------------------------------------------- 3. syncs
def _test_decoder(runner, prompts, B, max_len, graphs):
    """The factory's decoder with the `test` drafter: depth-4 branching trees, 30% wrong."""
    from samgpu.factory import build_decoder

    options = dict(
        references=[(p, list(range(100, 400))) for p in prompts],
        depth=4,
        branching=True,
        error_rate=0.3,
    )
    return build_decoder(
        runner, "test", batch_size=B, max_len=max_len, options=options, use_cuda_graphs=graphs
    )


def bench_syncs(model, tok, device) -> list[dict]:
    from samgpu.decoding.config import GenerationConfig
    from samgpu.decoding.runners import make_runner

    runner = make_runner(model)
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    prompts = [prompt, prompt[:20], prompt[:41]]
    rows = []
    for graphs in (False, True):
        for temperature in (0.0, 1.0):
            dec = _test_decoder(runner, prompts, 3, len(prompt) + 64, graphs)
            cfg = GenerationConfig(max_new_tokens=40, temperature=temperature, seed=0)
            dec.generate(prompts, cfg)  # compile, capture
            engine = dec.engine
            engine.configure(cfg, 3)
            engine.prefill([0, 1, 2], prompts)
            _sync()
            steps = 8
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for _ in range(steps):
                        engine.step()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            _sync()
            syncs = sum("synchroniz" in str(w.message) for w in caught)
            rows.append(
                dict(
                    bench="runtime_syncs",
                    provider="samgpu-loop",
                    params=dict(cuda_graphs=graphs, temperature=temperature, num_nodes=9, B=3),
                    metric="syncs_per_step",
                    unit="count",
                    syncs_per_step=syncs / steps,
                )
            )
    return rows


# ----------------------------------------------------------------------------- 4. non-model
def _non_model_point(model, B, N, device) -> list[dict]:
    from samgpu.kernels.commit import commit_triton
    from samgpu.kernels.kv_compact import kv_compact_triton
    from samgpu.kernels.tree import tree_mask_triton
    from samgpu.kernels.verify import verify_greedy_triton
    from samgpu.types import DecodeState, DraftTree, StepOutput, TreeMask, VerifyOutput

    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    V = cfg.vocab_size
    dtype = next(model.parameters()).dtype
    max_len = 512 + N
    g = torch.Generator(device=device).manual_seed(0)
    # Tree: odd node i is a child of i - 1, even node i a child of i - 2 (two children per even
    # node, the odd one first). The argmax after even node i is the token of node i + 2: the
    # accepted path is 0, 2, 4, ... (depth ~N/2, a real compaction).
    parents = torch.arange(-1, N - 1, dtype=torch.int32, device=device).repeat(B, 1)
    parents[:, 2::2] = torch.arange(0, N - 2, 2, dtype=torch.int32, device=device)
    num_nodes = torch.full((B,), N, dtype=torch.int32, device=device)
    tokens = torch.randint(0, V, (B, N), dtype=torch.int32, device=device, generator=g)
    cache_len = torch.full((B,), 512, dtype=torch.int32, device=device)
    logits = torch.randn(B, N, V, device=device, generator=g)
    nxt = (torch.arange(N, device=device) + 2).clamp(max=N - 1)
    logits.scatter_(2, tokens[:, nxt].long()[..., None], 100.0)
    k = torch.zeros(L, B, H, max_len, D, dtype=dtype, device=device)
    v = torch.zeros_like(k)
    tm = TreeMask.empty(B, N, device)
    ver = VerifyOutput.empty(B, N, N - 1, device)
    text = torch.zeros(B, max_len + N, dtype=torch.int32, device=device)
    # commit advances its own cache_len copy (kv_compact's stays at 512 over repeated calls);
    # text_len grows, but writes past the text buffer are masked.
    i32 = lambda fill: torch.full((B,), fill, dtype=torch.int32, device=device)  # noqa: E731
    state = DecodeState(
        root=i32(0),
        cache_len=cache_len.clone(),
        text=text,
        text_len=i32(513),
        prompt_len=i32(1),
        num_generated=i32(0),
        max_new_tokens=i32(1 << 30),
        finished=torch.zeros(B, dtype=torch.bool, device=device),
    )
    step = StepOutput(
        tree=DraftTree(tokens, parents, num_nodes),
        logits=logits,
        verify=ver,
        start_len=cache_len,
        new_tokens=torch.zeros(B, N, dtype=torch.int32, device=device),
        num_new=i32(0),
    )
    eos = torch.tensor([2], dtype=torch.int32, device=device)
    ops = {
        "tree_mask": lambda: tree_mask_triton(parents, num_nodes, cache_len, out=tm),
        "verify_greedy": lambda: verify_greedy_triton(logits, tokens, parents, num_nodes, out=ver),
        "kv_compact": lambda: kv_compact_triton(
            k, v, cache_len, ver.accepted_nodes, ver.num_accepted
        ),
        "commit": lambda: commit_triton(state, step, eos),
    }

    def pipeline():
        for op in ops.values():
            op()

    pipeline()
    _sync()
    params = dict(batch_size=B, num_nodes=N, vocab=V, layers=L, kv_heads=H, head_dim=D)
    accepted = float(ver.num_accepted.float().mean())
    rows = [_nm_row(name, params, bench_gpu(fn), accepted) for name, fn in ops.items()]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pipeline()
    rows.append(_nm_row("pipeline (1 graph)", params, bench_gpu(graph.replay), accepted))
    return rows


def bench_non_model(model, tok, device, quick) -> list[dict]:
    rows = []
    for B in (1, 64):
        for N in (16,) if quick else (16, 64):
            rows += _non_model_point(model, B, N, device)
            torch.cuda.empty_cache()
    return rows


def _nm_row(name, params, t, accepted):
    return dict(
        bench="runtime_non_model",
        provider=name,
        params=params,
        metric="step_us",
        unit="us",
        us=1e3 * t["p50"],
        mean_accepted=accepted,
        **t,
    )


def bench_stages(model, tok, device) -> list[dict]:
    from samgpu.decoding.config import GenerationConfig
    from samgpu.decoding.runners import make_runner

    runner = make_runner(model)
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    rows = []
    for B in (1, 64):
        prompts = [prompt] * B
        dec = _test_decoder(runner, [prompt], B, len(prompt) + 80, False)
        stages = dec.engine.profile_stages(
            prompts, GenerationConfig(max_new_tokens=40), max_steps=24
        )
        rows.append(
            dict(
                bench="runtime_stages",
                provider="samgpu-loop-eager",
                params=dict(batch_size=B, num_nodes=9, drafter="test"),
                metric="stage_ms",
                unit="ms",
                **{f"{k}_ms": v for k, v in (stages or {}).items()},
            )
        )
    return rows


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer points, 64 new tokens")
    ap.add_argument("--model-path", default=None, help="GGUF file or transformers folder")
    ap.add_argument("--skip-7b", action="store_true", help="no random 7B-shaped verify curve")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument(
        "--sections",
        default="ar,verify,syncs,non_model,stages",
        help="comma-separated; `verify7b`: only the random 7B-shaped verify curve (no model load)",
    )
    ap.add_argument("--verify-batches", type=int, nargs="+", default=None, help="default 1 8 64")
    ap.add_argument("--verify-nodes", type=int, nargs="+", default=None, help="default 1 2 .. 128")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_runtime needs a CUDA device (CUDA graphs, Triton kernels)")
        return 2
    device = torch.device("cuda")
    dtype = torch.bfloat16
    sections = set(args.sections.split(","))
    max_new = args.max_new_tokens or (64 if args.quick else 256)
    Ns = args.verify_nodes or ([1, 4, 16, 64] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128])
    Bs = args.verify_batches or ([1, 64] if args.quick else [1, 8, 64])
    unknown = sections - {"ar", "verify", "verify7b", "syncs", "non_model", "stages"}
    if unknown:
        print(f"bench_runtime: unknown sections {sorted(unknown)}")
        return 2
    model = tok = None
    if sections - {"verify7b"}:
        model, tok = load_model(args.model_path, device, dtype)
    label = Path(args.model_path).name if args.model_path else "SmolLM2-135M-Instruct"
    print(hardware_line())
    records: list[dict] = []

    def show(rows, cols, title):
        for r in rows:
            for key, val in r["params"].items():
                r.setdefault(key, val)
        print_table(rows, cols, title=title)
        print(hardware_line(), "\n")
        records.extend(rows)

    if "ar" in sections:
        rows = bench_ar(model, tok, args.batch, max_new, device)
        show(
            rows,
            ["provider", "batch_size", "max_new_tokens", "tok_s", "speedup_vs_ours"],
            f"AR greedy tokens/s, {label} bf16",
        )
    if "syncs" in sections:
        rows = bench_syncs(model, tok, device)
        show(rows, ["cuda_graphs", "temperature", "syncs_per_step"], "host syncs per step")
    if "non_model" in sections:
        rows = bench_non_model(model, tok, device, args.quick)
        show(
            rows,
            ["provider", "batch_size", "num_nodes", "us", "mean_accepted"],
            f"non-model step time (µs), {label} shapes",
        )
    if "stages" in sections:
        rows = bench_stages(model, tok, device)
        cols = ["batch_size"] + [f"{s}_ms" for s in ("draft", "tree", "forward", "verify")]
        show(rows, cols + ["commit_ms", "update_ms"], "loop stages, eager, ms per step")
    if "verify" in sections:
        rows = bench_verify_curve(model, label, Ns, Bs, device)
        show(
            rows,
            ["model", "batch_size", "num_nodes", "p50", "rel_to_n1", "us_per_node"],
            f"verify forward ms vs N, {label}",
        )
    if ("verify" in sections and not args.skip_7b) or "verify7b" in sections:
        del model
        torch.cuda.empty_cache()
        big = random_model(llama2_7b_config(), device, dtype)
        rows = bench_verify_curve(big, "llama-2-7b-shaped (random)", Ns, Bs, device)
        show(
            rows,
            ["model", "batch_size", "num_nodes", "p50", "rel_to_n1", "us_per_node"],
            "verify forward ms vs N, random Llama-2-7B shapes",
        )
        del big
    for r in records:
        r.setdefault("params", {})
    path = write_jsonl(records)
    print("results:", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
