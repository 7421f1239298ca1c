"""Where a decode step's time goes: the step time t(B, context) of a captured step and its kernels,
and the admission time of one prompt (and of the drafter's start in it, timed apart), for a
model of the default's shape (random weights unless --model-path: no transfer needed, the same
kernels and shapes; `--shape llama7b`: random weights of Llama-2-7B's shape, 13.5 GB in bf16).

    python -m profiling.profile_step [--batch 1 64 256] [--context 256 1024] [--method ar]
                                     [--prefill-lengths 100 1000 2000] [--model-path PATH]
                                     [--shape smollm2|llama7b]

The decoder comes from samgpu.factory.build_decoder (what the CLI and the API run); its Engine is
driven step by step: prefill B prompts of `context` tokens, warm up (compile, capture), then time
`--steps` graph replays with CUDA events (ms per step), then run them again under torch.profiler
and sum each kernel's GPU time per step (the top `--top` kernels, the rest as "other").
Prefill: `engine.prefill` of one prompt into slot 0, synchronised, median of 5 after a warm-up.
Results: a table per section and profiling/results/<day>-<card>-<sha>.jsonl (bench "profile_step").
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict

import torch

from profiling.common import (
    hardware_line,
    llama2_7b_config,
    print_table,
    random_model,
    smollm2_135m_config,
    write_jsonl,
)

SHAPES = {"smollm2": smollm2_135m_config, "llama7b": llama2_7b_config}


def load_model(args, dtype):
    if not args.model_path:
        torch.manual_seed(0)
        return random_model(SHAPES[args.shape](), "cuda", dtype)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype)
    return model.to("cuda").eval()


def step_profile(engine, steps: int, top: int) -> tuple[float, list[tuple[str, float, int]]]:
    """(ms per step by CUDA events, [(kernel, µs per step, launches per step)])."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        engine.step()
    end.record()
    torch.cuda.synchronize()
    step_ms = start.elapsed_time(end) / steps
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    total: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            name = ev.name if len(ev.name) < 60 else ev.name[:57] + "..."
            total[name] += ev.device_time_total
            calls[name] += 1
    ranked = sorted(total.items(), key=lambda kv: -kv[1])
    rows = [(n, us / steps, calls[n] // steps) for n, us in ranked[:top]]
    rest = sum(us for _, us in ranked[top:])
    rows.append(("other", rest / steps, sum(calls[n] for n, _ in ranked[top:]) // steps))
    return step_ms, rows


@contextlib.contextmanager
def timed_drafter_start(engine):
    """Inside the block, engine.drafter.start records its seconds (synchronised) per call into
    the yielded list: the part of an admission that is the drafter's (automata built over the
    prompt, table seeding). Its syncs serialise the admission, so time the rest outside."""
    seconds: list[float] = []
    inner = engine.drafter.start

    def start(state, new):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        inner(state, new)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)

    engine.drafter.start = start
    try:
        yield seconds
    finally:
        engine.drafter.start = inner


def prefill_trace(engine, prompt: list[int], rows: int = 22) -> None:
    """torch.profiler over one admission: the ops by host (self CPU) time, then by GPU time."""
    from torch.profiler import ProfilerActivity, profile

    engine.prefill([0], [prompt])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.prefill([0], [prompt])
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(f"one admission of {len(prompt)} tokens, by host time:")
    print(table.table(sort_by="self_cpu_time_total", row_limit=rows))
    print(table.table(sort_by="self_device_time_total", row_limit=rows // 2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="profile_step", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--context", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--method", default="ar")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--prefill-lengths", type=int, nargs="*", default=[100, 500, 1000, 2000])
    ap.add_argument(
        "--prefill-trace", type=int, default=0, help="profile one admission of N tokens"
    )
    ap.add_argument("--model-path", default=None, help="a transformers folder (default: random)")
    ap.add_argument(
        "--shape", default="smollm2", choices=sorted(SHAPES), help="the random model's shape"
    )
    ap.add_argument(
        "--plain",
        action="store_true",
        help="time the method's plain AR steps (adaptive's other mode)",
    )
    ap.add_argument("--temperature", type=float, default=0.0, help="sampled steps (top-k/p off)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU")
    from samgpu.decoding.config import GenerationConfig
    from samgpu.factory import build_decoder

    dtype = torch.bfloat16
    model = load_model(args, dtype)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    records, summary = [], []
    config = GenerationConfig(max_new_tokens=4 * args.steps + 16, temperature=args.temperature)
    mode = f"{args.method}{' plain' if args.plain else ''}{' T' if args.temperature else ''}"
    mode += f"{args.temperature:g}" if args.temperature else ""
    for batch in args.batch:
        for ctx in args.context:
            max_len = ctx + config.max_new_tokens + 64
            decoder = build_decoder(model, args.method, batch_size=batch, max_len=max_len)
            engine = decoder.engine
            engine.warm_up(batch)
            engine.configure(config, batch)
            prompts = torch.randint(3, vocab, (batch, ctx), generator=gen).tolist()
            engine.prefill(list(range(batch)), prompts)
            engine.set_speculate(not args.plain)
            for _ in range(3):
                engine.step()
            step_ms, kernels = step_profile(engine, args.steps, args.top)
            tok_s = batch / step_ms * 1e3
            summary.append(dict(batch=batch, context=ctx, step_ms=step_ms, tok_s_full=tok_s))
            print_table(
                [dict(kernel=n, us_per_step=us, launches=k) for n, us, k in kernels],
                ["kernel", "us_per_step", "launches"],
                title=f"B={batch} context={ctx} {mode}: {step_ms:.3f} ms per step",
            )
            records.append(
                dict(
                    bench="profile_step",
                    method=args.method,
                    batch_size=batch,
                    context=ctx,
                    step_ms=step_ms,
                    tok_s_full=tok_s,
                    kernels=[dict(name=n, us=us, launches=k) for n, us, k in kernels],
                    params=dict(
                        steps=args.steps,
                        plain=args.plain,
                        temperature=args.temperature,
                        random=not args.model_path,
                        shape=None if args.model_path else args.shape,
                        tag=args.tag,
                    ),
                )
            )
            del decoder, engine
            torch.cuda.empty_cache()
    print_table(summary, ["batch", "context", "step_ms", "tok_s_full"], title="decode step")

    if args.prefill_lengths:
        longest = max(args.prefill_lengths)
        decoder = build_decoder(model, args.method, batch_size=1, max_len=longest + 64)
        engine = decoder.engine
        engine.warm_up(1)
        engine.configure(GenerationConfig(max_new_tokens=8), 1)
        rows = []
        for n in args.prefill_lengths:
            prompt = torch.randint(3, vocab, (n,), generator=gen).tolist()
            with timed_drafter_start(engine) as start_s:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                engine.prefill([0], [prompt])  # the first of this length (start timed too)
                torch.cuda.synchronize()
                first_ms = (time.perf_counter() - t0) * 1e3
                for _ in range(5):
                    engine.prefill([0], [prompt])
            start_ms = statistics.median(start_s[1:]) * 1e3
            # without the start's syncs (it may overlap the prefill): the admission's wall time,
            # and its host time alone (no sync at its end)
            host, wall = [], []
            for _ in range(5):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                engine.prefill([0], [prompt])
                host.append(time.perf_counter() - t0)
                torch.cuda.synchronize()
                wall.append(time.perf_counter() - t0)
            ms = statistics.median(wall) * 1e3
            host_ms = statistics.median(host) * 1e3
            ms = statistics.median(wall) * 1e3
            start_s.clear()
            rows.append(
                dict(
                    prompt_tokens=n,
                    prefill_ms=ms,
                    host_ms=host_ms,
                    drafter_start_ms=start_ms,
                    first_ms=first_ms,
                )
            )
            records.append(
                dict(
                    bench="profile_prefill",
                    method=args.method,
                    batch_size=1,
                    prompt_tokens=n,
                    prefill_ms=ms,
                    host_ms=host_ms,
                    drafter_start_ms=start_ms,
                    first_ms=first_ms,
                    params=dict(random=not args.model_path, tag=args.tag),
                )
            )
        print_table(
            rows,
            ["prompt_tokens", "prefill_ms", "host_ms", "drafter_start_ms", "first_ms"],
            title="prefill, B=1",
        )
        if args.prefill_trace:
            prefill_trace(engine, torch.randint(3, vocab, (args.prefill_trace,)).tolist())
    print(hardware_line())
    print(f"results: {write_jsonl(records)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
