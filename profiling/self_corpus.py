"""The model's own responses for the static corpus (the paper's practice), made with samgpu itself.

    python -m profiling.self_corpus --out smollm2_self_responses.jsonl.gz [--batch-size 64]
    python -m profiling.self_corpus --prompts samgpu/data/corpus/eagle_prompts.jsonl.gz \
        --out smollm2_eagle_responses.jsonl.gz --method ar --batch-size 256   # EAGLE training

Prompts: the instructions/questions of the shipped MIT corpus (samgpu/data/corpus: GSM8K train,
GPTeacher codegen and roleplay), chat template applied, none of them a benchmark prompt
(tests/test_corpus_leak.py checks the result); or, with --prompts, the records {"source",
"instruction"} of a JSONL(.gz) file (profiling/eagle_prompts.py). Responses: greedy (the benchmarks
decode greedily, so greedy answers are the text the automaton should predict), `max_new_tokens` 256,
batched on the GPU with samgpu's `sam+tr`. Output: gzipped JSONL records {"source", "instruction",
"response"}; the default corpus reader takes both fields. `--seconds` bounds the run; records
finished by then are kept (prompts are shuffled with a fixed seed so a partial run still covers
every source)."""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time

from samgpu.sam.corpus import record_text
from samgpu.sam.default import default_corpus_paths

PROMPT_FIELDS = ("instruction", "input", "question")


def corpus_prompts() -> list[tuple[str, str]]:
    """(source file, prompt text) for every record of the shipped corpus."""
    out = []
    for path in default_corpus_paths():
        if "self_responses" in path.name:
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
        records = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if ".jsonl" in path.name
            else json.loads(text)
        )
        out += [(path.name, record_text(r, PROMPT_FIELDS)) for r in records]
    return [(s, p) for s, p in out if p.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", default=None, help="JSONL(.gz) of {source, instruction} records")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--method", default="sam+tr")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="stop after this much generation")
    args = ap.parse_args(argv)

    import torch

    from samgpu import api
    from samgpu.api import SamDecoder, encode_chat

    device = api.resolve_device("auto")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer = api.load_model("default", device, dtype)
    eos = api.eos_ids(model, tokenizer)
    if args.prompts:
        with gzip.open(args.prompts, "rt", encoding="utf-8") as f:
            prompts = [(r["source"], r["instruction"]) for r in map(json.loads, f)]
    else:
        prompts = corpus_prompts()
    random.Random(0).shuffle(prompts)
    prompts = prompts[: args.limit]
    # Longest first within the run would waste less padding, but shuffled order keeps partial runs
    # representative; batches are ragged anyway (per-sequence lengths, no padding compute).
    decoder = SamDecoder(model, tokenizer, method=args.method, index="default")
    start = time.perf_counter()
    done = 0
    tokens_out = 0
    with gzip.open(args.out, "wt", encoding="utf-8") as f:
        for b in range(0, len(prompts), args.batch_size):
            batch = prompts[b : b + args.batch_size]
            ids = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for _, p in batch]
            out = decoder.generate_ids(ids, max_new_tokens=args.max_new_tokens, eos_token_ids=eos)
            for (source, prompt), toks in zip(batch, out.tokens, strict=True):
                response = tokenizer.decode(toks, skip_special_tokens=True)
                rec = {"source": source, "instruction": prompt, "response": response}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                tokens_out += len(toks)
            done += len(batch)
            elapsed = time.perf_counter() - start
            print(f"{done}/{len(prompts)} prompts, {tokens_out / elapsed:.0f} tok/s", flush=True)
            if args.seconds is not None and elapsed > args.seconds:
                break
    print(f"wrote {done} responses ({tokens_out} tokens) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
