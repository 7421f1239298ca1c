"""End-to-end benchmark: every method side by side on the same card, the paper's table layout.

    python -m profiling.bench_e2e --dataset spec_bench --limit 60 --max-new-tokens 256
    samgpu bench --dataset humaneval --methods ar,sam+tr,merged --batch-size 4

Methods: transformers `generate` greedy with its default cache (`hf`), with a static cache
(`hf-static`) and with prompt lookup (`hf-pld`), and samgpu's `ar`, `pld`, `tr`, `sam`, `sam+tr`,
`sam-tree`, `merged`. All greedy, so every samgpu method must reproduce `ar` token for token
(reported as `identical_to_ar`; bf16 may diverge only at logit near-ties).

Per method and category: tokens/s, speedup over `ar`, MAT (mean accepted tokens per step, bonus
included), per-stage milliseconds from CUDA events (a separate eager pass on a few prompts, since
a captured CUDA graph has no stage boundaries), host syncs per step (0 by construction: the loop
reads a pinned flag every `check_every` steps), fraction identical to `ar`. Warm-up (graph capture,
Triton compilation, the index build) is excluded from timings and reported as `warmup_s`.
Spec-Bench MT-Bench questions run both turns: the second turn sees the model's own first answer.
Results: profiling/results/<date>-<card>-<sha>.jsonl; `python -m profiling.report` renders them.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch

from profiling import datasets
from profiling.common import env, write_jsonl
from samgpu.drafters import method_names

HF_METHODS = ("hf", "hf-static", "hf-pld")
DEFAULT_METHODS = HF_METHODS + method_names()  # every registered method


@dataclass
class Run:
    """One method's outputs over the benchmark, per item (turn outputs in order)."""

    tokens: dict[str, list[list[int]]]  # item_id -> generated tokens per turn
    seconds: dict[str, float]  # category -> wall seconds (timed region only)
    generated: dict[str, int]  # category -> generated tokens
    steps: dict[str, int]  # category -> decode steps (our methods)
    warmup_s: float


def encode_turn(tokenizer, item: datasets.BenchItem, history: list[list[int]]) -> list[int]:
    """Token ids of the prompt for the next turn of `item`, given the model's earlier answers."""
    if item.raw_prompt is not None:
        return tokenizer(item.raw_prompt, add_special_tokens=False)["input_ids"]
    messages = []
    for turn, answer in zip(item.turns, history, strict=False):
        messages += [
            {"role": "user", "content": turn},
            {"role": "assistant", "content": tokenizer.decode(answer, skip_special_tokens=True)},
        ]
    messages.append({"role": "user", "content": item.turns[len(history)]})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def num_turns(item: datasets.BenchItem) -> int:
    return 1 if item.raw_prompt is not None else len(item.turns)


def by_category(items: list[datasets.BenchItem]) -> dict[str, list[datasets.BenchItem]]:
    groups: dict[str, list[datasets.BenchItem]] = {}
    for it in items:
        groups.setdefault(it.category, []).append(it)
    return groups


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class OurMethod:
    """A samgpu method exactly as users run it: `SamDecoder` (the API the CLI uses, built by
    samgpu.factory.build_decoder) with the run's batch size, budgets and batching mode."""

    def __init__(self, model, tokenizer, method: str, args, index):
        from samgpu.api import SamDecoder

        self.decoder = SamDecoder(
            model,
            tokenizer,
            method,
            index,
            continuous_batching=bool(args.continuous_batching),
            speculation=args.speculation,
            **dict(args.option),
        )
        self.batch_size = args.batch_size
        self.continuous = bool(args.continuous_batching)
        self.max_new_tokens = args.max_new_tokens
        self.eos_ids = tuple(args.eos_ids)
        self.stats: list = []

    def generate(self, prompts: list[list[int]], max_new_tokens: int):
        return self.decoder.generate_ids(
            prompts,
            max_new_tokens=max_new_tokens,
            eos_token_ids=self.eos_ids,
            batch_size=self.batch_size,
        )

    def __call__(self, prompts: list[list[int]]) -> list[list[int]]:
        out = self.generate(prompts, self.max_new_tokens)
        self.stats += out.stats
        return out.tokens

    def warm_up(self, prompts: list[list[int]], longest: int) -> None:
        """Buffers for the longest prompt, graph capture and Triton compilation for every
        specialisation the run will meet (prompt lengths vary: integer arguments specialise on
        divisibility by 16), and, with continuous batching, refills."""
        self.decoder.ensure_capacity(
            self.batch_size, self.decoder.needed_len(longest, self.max_new_tokens)
        )
        for p in prompts:
            self.generate([p] * self.batch_size, 32)
        if self.continuous:
            self.generate(prompts * (1 + self.batch_size // len(prompts)), 8)

    def profile_stages(self, prompts: list[list[int]]) -> dict[str, float] | None:
        """Mean ms per step of each stage, from CUDA events in an eager pass."""
        from samgpu.decoding.config import GenerationConfig

        if not torch.cuda.is_available():
            return None
        engine = self.decoder.ensure_capacity(self.batch_size, 0).engine
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, eos_token_ids=self.eos_ids)
        return engine.profile_stages(prompts, config)


class HFMethod:
    """transformers `generate`, greedy, one prompt at a time (B=1) or left-padded batches."""

    def __init__(self, model, method: str, args):
        self.model, self.args = model, args
        self.kwargs: dict = dict(
            do_sample=False, max_new_tokens=args.max_new_tokens, eos_token_id=list(args.eos_ids)
        )
        if method == "hf-static":
            self.kwargs["cache_implementation"] = "static"
        if method == "hf-pld":
            self.kwargs["prompt_lookup_num_tokens"] = 10
        self.pad = args.eos_ids[0]

    @torch.inference_mode()
    def __call__(self, prompts: list[list[int]]) -> list[list[int]]:
        outs = []
        for p in prompts:  # transformers' prompt lookup supports batch size 1 only
            ids = torch.tensor([p], device=self.model.device)
            gen = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), pad_token_id=self.pad, **self.kwargs
            )
            outs.append(gen[0, len(p) :].tolist())
        return outs


def run_method(fn, tokenizer, items, batch_size: int) -> Run:
    """Run all items category by category, turn by turn, in batches; time only generation."""
    tokens: dict[str, list[list[int]]] = {it.item_id: [] for it in items}
    seconds: dict[str, float] = {}
    generated: dict[str, int] = {}
    steps: dict[str, int] = {}
    for cat, group in by_category(items).items():
        elapsed = 0.0
        first_stat = len(getattr(fn, "stats", []))
        for turn in range(max(num_turns(it) for it in group)):
            todo = [it for it in group if num_turns(it) > turn]
            prompts = [encode_turn(tokenizer, it, tokens[it.item_id]) for it in todo]
            # continuous batching: the whole group in one call, through batch_size slots
            chunk = len(prompts) if getattr(fn, "continuous", False) else batch_size
            for start in range(0, len(prompts), chunk):
                sync()
                t0 = time.perf_counter()
                outs = fn(prompts[start : start + chunk])
                sync()
                elapsed += time.perf_counter() - t0
                for it, out in zip(todo[start : start + chunk], outs, strict=True):
                    tokens[it.item_id].append(list(out))
        seconds[cat] = elapsed
        generated[cat] = sum(len(t) for it in group for t in tokens[it.item_id])
        if hasattr(fn, "stats"):
            steps[cat] = sum(int(s.steps) for s in fn.stats[first_stat:])
    return Run(tokens, seconds, generated, steps, 0.0)


@torch.inference_mode()
def divergence_gaps(model, tokenizer, items, run: Run, ar: Run) -> list[float]:
    """For each first-turn output that differs from `ar`, the target's top-2 logit gap at the first
    differing position (a plain transformers forward in the benchmark dtype over prompt + the
    common prefix). Small gaps are floating-point near-ties; a large gap would be a bug."""
    gaps = []
    for it in items:
        ours, ref = run.tokens[it.item_id][0], ar.tokens[it.item_id][0]
        if ours == ref:
            continue
        j = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=False)) if a != b), None)
        if j is None:  # one is a prefix of the other: an EOS decision, a near-tie too
            j = min(len(ours), len(ref)) - 1
        ids = encode_turn(tokenizer, it, []) + ref[:j]
        logits = model(torch.tensor([ids], device=model.device)).logits[0, -1].float()
        top2 = logits.topk(2).values
        gaps.append(float(top2[0] - top2[1]))
    return gaps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="samgpu bench", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="spec_bench", choices=datasets.DATASETS)
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="items (spread over categories)")
    ap.add_argument("--hf-limit", type=int, default=12, help="items for the slow hf-* baselines")
    ap.add_argument("--model", default="default", help="'default' or a local transformers path")
    ap.add_argument("--index", default="default", help="'default', a .samidx path, or 'none'")
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="auto: bfloat16 on CUDA, float32 on a CPU (bf16 matmuls there are ~50x slower)",
    )
    ap.add_argument("--option", action="append", default=[], type=_kv, help="drafter KEY=VALUE")
    ap.add_argument("--tag", default="", help="free-form label stored with every record")
    ap.add_argument(
        "--speculation",
        default="adaptive",
        choices=["adaptive", "always"],
        help="samgpu methods: adaptive (the default: plain steps where drafting does not pay) or"
        " always (every step drafts: the MAT is the drafter's acceptance alone)",
    )
    ap.add_argument(
        "--continuous-batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="samgpu methods refill finished slots, as the CLI does by default (one call per"
        " category and turn); --no-continuous-batching: static batches",
    )
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DEFAULT_METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {', '.join(DEFAULT_METHODS)}")
    for name in ("batch_size", "max_new_tokens", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} {value} must be >= 1")
    if not torch.cuda.is_available():
        print("warning: no CUDA device; timings are CPU timings and not comparable to the paper's")

    from samgpu import api, resolve

    device = api.resolve_device("auto")
    dtype = api.resolve_dtype(args.dtype, device)
    args.dtype = str(dtype).removeprefix("torch.")  # (recorded as the resolved name)
    t0 = time.perf_counter()
    model, tokenizer = api.load_model(args.model, device, dtype)
    load_s = time.perf_counter() - t0
    args.eos_ids = api.eos_ids(model, tokenizer)
    index = None
    if args.index != "none":
        index = resolve.load_index(
            resolve.default_index(tokenizer, progress=True)
            if args.index == "default"
            else args.index,
            tokenizer,
        )
    items = datasets.load(args.dataset, args.limit)
    dummy_answer = [0] * args.max_new_tokens
    longest = max(
        len(encode_turn(tokenizer, it, [dummy_answer] * (num_turns(it) - 1))) for it in items
    )
    print(f"{args.dataset}: {len(items)} items, longest prompt ~{longest} tokens")
    print(f"model load {load_s:.1f}s")

    params = dict(
        model=args.model if args.model != "default" else "SmolLM2-135M-Instruct",
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        index=args.index,
        options=dict(args.option),
        tag=args.tag,
        continuous_batching=args.continuous_batching,
        speculation=args.speculation,
    )
    runs: dict[str, Run] = {}
    records = []
    for method in methods:
        t0 = time.perf_counter()
        if method in HF_METHODS:
            if args.batch_size != 1:
                print(f"skip {method}: transformers baselines run at B=1 only")
                continue
            fn = HFMethod(model, method, args)
            subset = items[: args.hf_limit]
            if method == "hf-static":
                # transformers compiles the static-cache path once per prompt shape: a first pass
                # over the same prompts keeps compilation out of its timing (its best case).
                run_method(fn, tokenizer, subset, args.batch_size)
            else:
                fn([encode_turn(tokenizer, subset[0], [])[:64]])
        else:
            fn = OurMethod(model, tokenizer, method, args, index)
            subset = items
            fn.warm_up([encode_turn(tokenizer, it, []) for it in items[:8]], longest)
        sync()
        warmup_s = time.perf_counter() - t0
        run = run_method(fn, tokenizer, subset, args.batch_size)
        run.warmup_s = warmup_s
        runs[method] = run
        stages = None
        if isinstance(fn, OurMethod):
            stages = fn.profile_stages([encode_turn(tokenizer, it, []) for it in subset[:4]])
        ar = runs.get("ar")
        gaps = None
        if ar is not None and method != "ar":
            gaps = divergence_gaps(model, tokenizer, subset, run, ar)
        for cat in [*run.seconds, "Overall"]:
            cats = list(run.seconds) if cat == "Overall" else [cat]
            secs = sum(run.seconds[c] for c in cats)
            gen = sum(run.generated[c] for c in cats)
            steps = sum(run.steps.get(c, 0) for c in cats)
            ids = [it.item_id for it in subset if cat == "Overall" or it.category == cat]
            ident = None
            if ar is not None and method != "ar":
                same = [run.tokens[i] == ar.tokens[i] for i in ids if i in ar.tokens]
                ident = sum(same) / len(same) if same else None
            records.append(
                dict(
                    bench="e2e",
                    provider="transformers" if method in HF_METHODS else "samgpu",
                    dataset=args.dataset,
                    method=method,
                    category=cat,
                    batch_size=args.batch_size,
                    num_requests=len(ids),
                    generated_tokens=gen,
                    seconds=secs,
                    tok_s=gen / secs if secs else 0.0,
                    mat=gen / steps if steps else None,
                    identical_to_ar=ident,
                    stage_ms=stages if cat == "Overall" else None,
                    divergence_top2_gaps=gaps if cat == "Overall" else None,
                    syncs_per_step=0 if method not in HF_METHODS else None,
                    warmup_s=warmup_s,
                    params=params,
                )
            )
        o = records[-1]
        print(
            f"{method:>10}: {o['tok_s']:8.1f} tok/s  MAT {o['mat'] or 0:5.2f}  "
            f"identical {o['identical_to_ar'] if o['identical_to_ar'] is not None else '-'}  "
            f"warm-up {warmup_s:.1f}s"
            + (f"  divergence top-2 gaps max {max(gaps):.3f}" if gaps else "")
        )
    path = write_jsonl(records)
    from profiling.report import e2e_table

    print(e2e_table([dict(r, env=env()) for r in records], args.dataset, args.batch_size))
    print("results:", path)
    return 0


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option wants KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    return key, value


def cli_main(argv: list[str] | None = None) -> int:
    """`python -m profiling.bench_e2e` / `samgpu bench`: a bad --index or --option (found when the
    decoders are built) is one error line, as in `samgpu generate`, not a traceback."""
    from samgpu.errors import UserError

    try:
        return main(argv)
    except (UserError, ValueError) as e:
        print(f"samgpu bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(cli_main())
