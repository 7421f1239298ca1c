"""Automaton kernels on the GPU: per-kernel and whole-step latency, dynamic prefill build time.

    python -m profiling.bench_automaton [--index PATH] [--batch 1 8 64] [--prefill 512 2048 8192]
                                        [--n-predicts 40] [--accepted 4] [--reps 200]

Static index: --index PATH (a .samidx file), or --datastore DIR (built from that folder's corpora,
e.g. ../shared/data/datastore_corpus), else the default index built from the shipped corpus
(samgpu/data/corpus) with the default SmolLM2 tokenizer (cached under $SAMGPU_CACHE), else -- when
the tokenizer cannot load -- a synthetic corpus (Zipf unigrams mixed with repeated phrases). No
network, no ../shared: runs from a copy of the repository. Prompts are Spec-Bench turns
(profiling/data) tokenized the same way, concatenated per sequence (synthetic text otherwise).

Measured (median µs; p20-p80 in the JSONL), per batch size B, chain of n_predicts nodes:
- sam_match: static match advanced over `--accepted` tokens per sequence (new_tokens [B, K]);
- sam_dynamic_extend: match-then-extend of the dynamic automata by the same tokens;
- sam_draft_chain: fused select + chain gather into the DraftTree (sam+tr rule; a 40-node chain);
- sam_update: sam_match and sam_dynamic_extend fused in one launch (the two walks side by side);
- step_graph: sam_update + sam_draft_chain captured in ONE CUDA graph and timed by replays -- the
  target numbers (H100: <= 20 µs at B=1, <= 50 µs at B=64); step_graph_separate: the same with
  the three separate kernels. Both first run eagerly under torch.cuda.set_sync_debug_mode("error")
  to prove they make no host sync;
- prefill: dynamic build of a P-token prompt per sequence (reset + one kernel, sequential per
  sequence; target <= 2 ms for 2,048 tokens on H100), and the static prefill match, per B.
Stateful ops (the dynamic automata grow with every call) are timed with CUDA events per call over
--reps calls on automata sized for them; stateless ones with triton's do_bench.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from samgpu.automata import DynamicAutomata, StaticAutomaton
from samgpu.kernels.sam_draft import SamSelectConfig, sam_draft_chain_triton
from samgpu.kernels.sam_dynamic import sam_dynamic_extend_triton
from samgpu.kernels.sam_match import sam_match_triton
from samgpu.kernels.sam_update import sam_update_triton
from samgpu.types import DraftTree

try:
    from profiling.common import ROOT, bench_gpu, hardware_line, print_table, write_jsonl
except ImportError:  # run as `python profiling/bench_automaton.py`
    from common import ROOT, bench_gpu, hardware_line, print_table, write_jsonl

SYNTHETIC_VOCAB = 49152
SYNTHETIC_EOS = 2


# ----------------------------------------------------------------------------- data
def _load_tokenizer():
    try:
        from samgpu.models import load_default_tokenizer  # profiling may use the runtime

        return load_default_tokenizer()
    except Exception as exc:  # noqa: BLE001 - any failure: synthetic data
        print(f"default tokenizer unavailable ({type(exc).__name__}: {exc}); synthetic data")
        return None


def _synthetic_tokens(num_tokens: int, seed: int) -> np.ndarray:
    """Zipf(1.1) unigrams mixed with phrases repeated from a pool (long repeats, like chat text)."""
    rng = np.random.default_rng(seed)

    def zipf(n: int) -> np.ndarray:
        ids = (rng.zipf(1.1, size=4 * n) - 1) % (SYNTHETIC_VOCAB - 3) + 3
        return ids[:n].astype(np.int32)

    pool = [zipf(int(rng.integers(5, 41))) for _ in range(2000)]
    pieces, total = [], 0
    while total < num_tokens:
        piece = pool[int(rng.zipf(1.2)) % len(pool)] if rng.random() < 0.5 else zipf(10)
        pieces.append(piece)
        total += piece.size
    return np.concatenate(pieces)[:num_tokens]


def load_static(args, tokenizer):
    from samgpu.sam import SamIndex, build_default_index, build_index_from_files

    if args.index:
        return SamIndex.load(args.index), "file:" + str(args.index)
    if args.datastore and tokenizer is not None:
        folder = Path(args.datastore)
        paths = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".jsonl", ".gz"))
        if paths:
            return build_index_from_files(paths, tokenizer), "datastore:" + folder.name
        print(f"no corpus files in {folder}; using the shipped corpus")
    if tokenizer is not None:
        return SamIndex.load(build_default_index(tokenizer, progress=False)), "default-corpus"
    tokens = _synthetic_tokens(2_000_000, seed=0)
    docs = np.array_split(tokens, 5000)
    index = SamIndex.build(docs, vocab_size=SYNTHETIC_VOCAB, eos_id=SYNTHETIC_EOS)
    return index, "synthetic-2M"


def prompt_stream(tokenizer, num_tokens: int) -> np.ndarray:
    """One long token stream to cut prompts from: Spec-Bench turns, or synthetic text."""
    if tokenizer is not None:
        ids: list[int] = []
        with open(ROOT / "profiling" / "data" / "spec_bench.jsonl") as f:
            for line in f:
                for turn in json.loads(line)["turns"]:
                    ids += tokenizer(turn, add_special_tokens=False)["input_ids"]
                if len(ids) >= num_tokens:
                    break
        reps = -(-num_tokens // max(len(ids), 1))
        return np.asarray((ids * reps)[:num_tokens], dtype=np.int32)
    return _synthetic_tokens(num_tokens, seed=1)


def prompts_for(stream: np.ndarray, batch: int, length: int, device) -> torch.Tensor:
    """[B, length] int32: sequence b starts at a different offset of the stream."""
    stride = max((stream.size - length) // max(batch, 1), 1)
    rows = [stream[(b * stride) % max(stream.size - length, 1) :][:length] for b in range(batch)]
    return torch.from_numpy(np.stack(rows)).to(device)


# ----------------------------------------------------------------------------- timing
def time_calls(fn, reps: int, warmup: int = 3) -> dict:
    """CUDA-event time of each of `reps` calls (for ops whose state changes every call); wall clock
    on CPU (--smoke)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        ms = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - start) * 1e3)
        return _quantiles(ms)
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(reps)
    ]
    torch.cuda.synchronize()
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return _quantiles([s.elapsed_time(e) for s, e in events])


def _quantiles(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=10) if len(ms) > 1 else ms * 9
    return {"p50": statistics.median(ms), "p20": q[1], "p80": q[7], "n": len(ms)}


def bench_stateless(fn, reps: int) -> dict:
    return bench_gpu(fn) if torch.cuda.is_available() else time_calls(fn, reps, warmup=1)


def record(bench, params, t, **extra) -> dict:
    return {
        "bench": bench,
        "provider": "triton",
        "params": params,
        "metric": "latency",
        "unit": "ms",
        **t,
        "us": t["p50"] * 1e3,
        **extra,
    }


# ----------------------------------------------------------------------------- benchmarks
def bench_step(static, stream, batch, args, device) -> list[dict]:
    """Per-kernel and CUDA-graph step latency at batch size `batch`.

    Each step is fed the NEXT `accepted` tokens of each sequence's real continuation (a device-side
    gather from a [B, L] buffer with a device offset, `feed`), so matches and extensions behave as
    in decoding rather than repeating one token group. The feed is timed alone and subtracted in
    `net_us` of the step records."""
    k = args.n_predicts  # new_tokens width: longest chain + bonus
    prompt_len = 512 if device.type == "cuda" else 32
    # sized for every call below: warm-ups, eager reps, graph warm-ups and replays
    capacity = prompt_len + (8 * args.reps + 64) * args.accepted
    dyn = DynamicAutomata(batch, capacity, static.vocab_size, device)
    text = prompts_for(stream, batch, capacity, device)
    prompts, cont = text[:, :prompt_len].contiguous(), text[:, prompt_len:].contiguous()
    lens = torch.full((batch,), prompt_len, dtype=torch.int32, device=device)
    dyn.prefill(prompts, lens)
    smatch = static.new_matches(batch)
    static.prefill(smatch, prompts, lens)
    new_tokens = torch.full((batch, k), -1, dtype=torch.int32, device=device)
    num_new = torch.full((batch,), args.accepted, dtype=torch.int32, device=device)
    tree = DraftTree.empty(batch, args.n_predicts, device)
    root = torch.empty(batch, dtype=torch.int32, device=device)
    source = torch.empty(batch, dtype=torch.int32, device=device)
    chain_len = torch.empty_like(source)
    cfg = SamSelectConfig(n_predicts=args.n_predicts)
    offset = torch.zeros(1, dtype=torch.int64, device=device)
    lanes = torch.arange(args.accepted, device=device)

    def feed():
        idx = ((offset + lanes) % cont.shape[1]).expand(batch, args.accepted)
        chunk = torch.gather(cont, 1, idx)
        new_tokens[:, : args.accepted].copy_(chunk)
        root.copy_(chunk[:, -1])
        offset.add_(args.accepted)

    def match():
        sam_match_triton(static, new_tokens, num_new, smatch.state, smatch.match_len)

    def extend():
        sam_dynamic_extend_triton(dyn, new_tokens, num_new)

    def draft():
        sam_draft_chain_triton(
            static, smatch, dyn, root, tree, cfg, source=source, chain_len=chain_len
        )

    def update():
        sam_update_triton(static, smatch, dyn, new_tokens, num_new)

    def step_separate():
        feed()
        match()
        extend()
        draft()

    def step():
        feed()
        update()
        draft()

    params = {"B": batch, "n_predicts": args.n_predicts, "accepted": args.accepted}
    feed()
    out = [
        record("sam_match", params, bench_stateless(match, args.reps)),
        record("sam_dynamic_extend", params, time_calls(extend, args.reps)),
        record("sam_draft_chain", params, bench_stateless(draft, args.reps)),
        record("sam_update", params, time_calls(update, args.reps)),
    ]
    if device.type != "cuda":  # --smoke: no sync check, no graph
        out.append(record("step_eager", params, time_calls(step, args.reps)))
        return out
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()  # raises on any host sync
        step_separate()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    timings = {}
    for name, fn in (("feed", feed), ("step_graph", step), ("step_graph_separate", step_separate)):
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            fn()
        timings[name] = time_calls(graph.replay, args.reps)
    for name in ("step_graph", "step_graph_separate"):
        t = timings[name]
        out.append(
            record(
                name,
                params,
                t,
                net_us=(t["p50"] - timings["feed"]["p50"]) * 1e3,
                feed_us=timings["feed"]["p50"] * 1e3,
                host_syncs=0,
                sources=torch.bincount(source.long(), minlength=4).tolist(),
                mean_chain=float(chain_len.float().mean()),
                mean_dyn_match=float(dyn.match_len.float().mean()),
                mean_static_match=float(smatch.match_len.float().mean()),
            )
        )
    return out


def bench_prefill(static, stream, batch, length, args, device) -> list[dict]:
    dyn = DynamicAutomata(batch, length, static.vocab_size, device)
    prompts = prompts_for(stream, batch, length, device)
    lens = torch.full((batch,), length, dtype=torch.int32, device=device)
    smatch = static.new_matches(batch)

    def build():
        dyn.reset(batch)
        sam_dynamic_extend_triton(dyn, prompts, lens)

    def static_prefill():
        smatch.reset()
        sam_match_triton(static, prompts, lens, smatch.state, smatch.match_len)

    params = {"B": batch, "prompt_len": length}
    reps = max(5, args.reps // 20)
    t = time_calls(build, reps, warmup=1)
    states = float(dyn.num_states.float().mean())
    return [
        record(
            "dynamic_prefill",
            params,
            t,
            tok_s=batch * length / (t["p50"] / 1e3),
            states_per_token=states / length,
            bytes_per_token=dyn.bytes_per_token,
        ),
        record("static_prefill_match", params, bench_stateless(static_prefill, reps)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default=None, help="a .samidx static index (default: shipped)")
    ap.add_argument(
        "--datastore",
        default=None,
        help="build the static index from every .json/.jsonl(.gz) file in this folder "
        "(e.g. ../shared/data/datastore_corpus) instead of the shipped corpus",
    )
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--prefill", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--n-predicts", type=int, default=40)
    ap.add_argument("--accepted", type=int, default=4, help="tokens per sequence per step")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--no-write", action="store_true", help="print only, no JSONL")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CPU run under TRITON_INTERPRET=1 (checks the script, times nothing useful)",
    )
    args = ap.parse_args()
    if args.smoke:
        args.batch, args.prefill, args.reps, args.n_predicts = [1, 2], [48], 2, 8
        args.no_write = True
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("bench_automaton needs a CUDA device (or --smoke with TRITON_INTERPRET=1)")
    else:
        device = torch.device("cuda")
    tokenizer = _load_tokenizer()
    start = time.perf_counter()
    index, corpus = load_static(args, tokenizer)
    static = StaticAutomaton.from_index(index, device)
    print(
        f"static index ({corpus}): {index.num_tokens:,} tokens, {index.num_states:,} states, "
        f"{static.nbytes / index.num_tokens:.1f} GPU bytes/token, "
        f"{time.perf_counter() - start:.1f}s"
    )
    stream = prompt_stream(tokenizer, max(args.prefill + [1024]) * 4)
    records: list[dict] = []
    for batch in args.batch:
        records += bench_step(static, stream, batch, args, device)
    for length in args.prefill:
        for batch in sorted({1, max(args.batch)}):
            records += bench_prefill(static, stream, batch, length, args, device)
    for r in records:
        r["params"]["corpus"] = corpus
    rows = [
        {
            "bench": r["bench"],
            "B": r["params"]["B"],
            "prompt": r["params"].get("prompt_len", "—"),
            "µs p50": r["us"],
            "p20-p80 µs": f"{r['p20'] * 1e3:.1f}-{r['p80'] * 1e3:.1f}",
            "net µs": r.get("net_us"),
            "Mtok/s": r["tok_s"] / 1e6 if "tok_s" in r else None,
        }
        for r in records
    ]
    print_table(rows, ["bench", "B", "prompt", "µs p50", "p20-p80 µs", "net µs", "Mtok/s"])
    print(hardware_line())
    print(
        "targets (H100): step_graph net <= 20 µs at B=1, <= 50 µs at B=64; "
        "dynamic_prefill of 2,048 tokens <= 2,000 µs"
    )
    if not args.no_write:
        print("wrote", write_jsonl(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
