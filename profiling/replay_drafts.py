"""Drafting studies on a CPU: replay a model's recorded greedy outputs through the real decoder.

A speculative method's acceptance depends only on its drafts and on the target's greedy tokens, so
with the target replaced by `ReplayRunner` (a runner whose argmax at position p is the recorded
token p+1 of the request in that slot) the decoder built by `samgpu.factory.build_decoder`, with
its scheduler, drafters, verification and KV compaction, reproduces the recorded outputs and
measures exactly the MAT the method gets on them, with no model. Recorded outputs come from the
GPU: `python -m profiling.bench_store --stream full --save-outputs DIR` (the `ar` file is the
model's greedy output). The decoder runs on the CPU, so methods are as fast as their torch
references, and each output is checked against the recording.

    python -m profiling.replay_drafts --methods sam --store off,on --batch-size 1 \
        --outputs profiling/results/20261130-h200-store-outputs-ar-B64-a.jsonl.gz

Emulates the GPU's batch size B (slots, continuous batching, and the method's GPU budget of draft
nodes at B; the CPU cap does not apply). Prints a table; JSON records via write_jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from profiling.common import env, hardware_line, print_table, write_jsonl
from samgpu.decoding.runners.base import KVCache
from samgpu.errors import InputError
from samgpu.inputs import iter_jsonl


class ReplayRunner:
    """Runner contract (samgpu/decoding/runners/base.py) for a 'model' that answers each recorded
    prompt with its recorded output. K holds the token ids of the cache, V the request's number
    in every position, so the slot's request survives refills and KV compaction unchanged.
    `eos` continues any sequence past its recorded end."""

    graph_safe = False
    num_layers = 1
    num_kv_heads = 1
    head_dim = 1
    hidden_size = 1
    dtype = logits_dtype = torch.float32

    def __init__(self, records: list[tuple[list[int], list[int]]], vocab_size: int, eos: int):
        self.vocab_size = vocab_size
        self.device = torch.device("cpu")
        self.eos = eos
        short = [i for i, (p, _) in enumerate(records) if len(p) < 2]
        if short:  # V at position 0 names the request: the prefill must write a token there
            raise ValueError(f"records {short[:5]}: replay needs prompts of 2 tokens or more")
        self.by_prompt = {tuple(p[:-1]): i for i, (p, _) in enumerate(records)}
        width = max(len(p) + len(o) for p, o in records) + 1
        seqs = torch.full((len(records), width), eos, dtype=torch.long)
        for i, (p, o) in enumerate(records):
            seqs[i, : len(p) + len(o)] = torch.tensor(p + o)
        self.seqs = seqs  # [requests, width]: prompt + output, then eos

    def allocate_cache(self, max_reqs: int, max_len: int) -> KVCache:
        return KVCache.empty(1, max_reqs, 1, max_len, 1, dtype=self.dtype, device="cpu")

    def prefill(self, input_ids, lengths, cache, *, hidden_out=None) -> None:
        for b in range(input_ids.shape[0]):
            n = int(lengths[b])
            ids = input_ids[b, :n]
            key = tuple(int(t) for t in ids)
            if key not in self.by_prompt:
                raise KeyError(f"prompt of {n} tokens is not in the recording")
            cache.k[0, b, 0, :n, 0] = ids.float()
            cache.v[0, b, 0, :n, 0] = float(self.by_prompt[key])
        cache.cache_len[: input_ids.shape[0]] = lengths.to(torch.int32)

    def forward_tree(
        self, tokens, positions, tree_mask, cache, out, hidden_out=None, *, live=None
    ) -> torch.Tensor:
        B, N = tokens.shape
        at = cache.cache_len[:B].long()[:, None] + torch.arange(N)
        request = cache.v[0, :B, 0, 0, 0].long()  # position 0: every prompt has a token there
        cache.k[0, :B, 0, :, 0].scatter_(1, at, tokens.float())
        cache.v[0, :B, 0, :, 0].scatter_(1, at, request[:, None].float().expand(B, N))
        nxt = (positions.long() + 1).clamp(max=self.seqs.shape[1] - 1)
        target = self.seqs[request[:, None], nxt]
        out.zero_()
        out.scatter_(2, target[..., None], 1.0)
        return out


def load_records(path: Path) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, output ids) per line of a bench_store --save-outputs file (.jsonl[.gz])."""
    records = []
    for line_no, rec in iter_jsonl(path):
        if not (isinstance(rec, dict) and {"prompt", "output"} <= rec.keys()):
            raise InputError(f"{path}:{line_no}: expected an object with 'prompt' and 'output'")
        records.append((rec["prompt"], rec["output"]))
    return records


def run(runner, records, method, batch_size, index, options, max_new, segments=()) -> dict:
    from samgpu.decoding.config import GenerationConfig
    from samgpu.drafters.registry import budget_options
    from samgpu.factory import build_decoder

    opts = {**budget_options(method, batch_size), **options}  # the GPU's budget, not the CPU cap
    longest = max(len(p) for p, _ in records)
    dec = build_decoder(
        runner, method, batch_size=batch_size, max_len=longest + max_new + 128, index=index,
        options=opts, use_cuda_graphs=False,
    )  # fmt: skip
    cfg = GenerationConfig(
        max_new_tokens=max_new, eos_token_ids=(runner.eos,), speculation="always"
    )
    t0 = time.perf_counter()
    out = dec.generate([p for p, _ in records], cfg)
    secs = time.perf_counter() - t0
    same = sum(o == r[1] for o, r in zip(out.tokens, records, strict=True))
    gen = sum(s.generated for s in out.stats)
    steps = sum(s.steps for s in out.stats)
    sources: dict[str, int] = {}
    for s in out.stats:
        for k, v in s.sources.items():
            sources[k] = sources.get(k, 0) + v
    per_segment, lo = {}, 0
    for name, n in segments:  # MAT of consecutive parts of the stream (datasets)
        part = out.stats[lo : lo + n]
        lo += n
        per_segment[f"MAT_{name}"] = sum(s.generated for s in part) / max(
            1, sum(s.steps for s in part)
        )
    return dict(
        requests=len(records),
        **per_segment,
        same_as_recorded=same,
        generated=gen,
        steps=steps,
        MAT=gen / steps if steps else None,
        **{f"share_{k}": v / steps for k, v in sorted(sources.items())},
        seconds=secs,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.replay_drafts", description=__doc__)
    ap.add_argument("--outputs", type=Path, required=True, help="recorded prompts + outputs")
    ap.add_argument("--methods", default="sam")
    ap.add_argument("--store", default="off,on", help="off, on, or both")
    ap.add_argument("--batch-size", type=int, default=1, help="the GPU batch size to emulate")
    ap.add_argument("--limit", type=int, default=None, help="the first N requests")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--option", action="append", default=[], help="KEY=VALUE for every run")
    ap.add_argument(
        "--segments",
        default="spec:480,code:164,rag:716",
        help="NAME:N,... MAT per consecutive part of the stream ('' for none); the default is "
        "bench_store's full stream (a)",
    )
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if not args.outputs.is_file():
        ap.error(f"--outputs {args.outputs}: no such file (bench_store --save-outputs writes one)")
    bad = [x for x in args.store.split(",") if x not in ("off", "on")]
    if bad:
        ap.error(f"--store: off, on or off,on, got {args.store!r}")

    from samgpu import api, resolve
    from samgpu.cli.generate import parse_options

    _, tokenizer = api.load_model("default", torch.device("cpu"), torch.float32)
    index = resolve.load_index(resolve.default_index(tokenizer, progress=True), tokenizer)
    try:
        records = load_records(args.outputs)[: args.limit]
    except InputError as e:
        ap.error(str(e))
    runner = ReplayRunner(records, vocab_size=len(tokenizer), eos=int(tokenizer.eos_token_id))
    options = parse_options(args.option)
    segments = [
        (n, int(k)) for n, _, k in (x.partition(":") for x in args.segments.split(",") if x)
    ]
    rows, recs = [], []
    for method in args.methods.split(","):
        for store in args.store.split(","):
            opts = {**options, **({"store": True} if store == "on" else {})}
            res = run(
                runner, records, method, args.batch_size, index, opts, args.max_new_tokens,
                segments,
            )  # fmt: skip
            row = dict(method=method, store=store, B=args.batch_size, **res)
            rows.append(row)
            recs.append(dict(bench="replay_drafts", options=opts, tag=args.tag, **row))
            print(json.dumps(row), flush=True)
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k.startswith("share_"), k))
    print_table(rows, cols, title=f"replayed drafts: {args.outputs.name}")
    print(hardware_line(env()))
    print(f"wrote {write_jsonl(recs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
