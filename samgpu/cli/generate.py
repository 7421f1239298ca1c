"""`samgpu generate`: argument checks, the model session, and one prompt streamed to the terminal.
A JSONL file run (resumable, one process or one per GPU under torchrun) is in samgpu/cli/file.py;
the parser and entry point are in samgpu/cli/__init__.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from samgpu.decoding.stages import nvtx_range
from samgpu.errors import UserError
from samgpu.hf_args import single_token_stops

# ----------------------------------------------------------------------------- generate: checks


def parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"option {item!r} must look like KEY=VALUE, e.g. -O l_threshold=5")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = {"true": True, "false": False}.get(raw.lower(), raw)
        out[key.strip().replace("-", "_")] = value
    return out


def check_args(args: argparse.Namespace) -> None:
    from samgpu.drafters import method_names

    methods = method_names()
    if args.method.lower() in methods:
        args.method = args.method.lower()
    if args.method not in methods:
        import difflib

        close = difflib.get_close_matches(args.method, methods, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown method {args.method!r}{hint}; choose one of {', '.join(methods)}")
    if args.input is not None and not args.output:
        raise UserError("--input needs --output FILE (results are written there, in input order)")
    if args.prompt is not None and args.output:
        raise UserError("--output goes with --input; --prompt prints the completion to stdout")
    if args.prompt is not None and args.stats_json:
        raise UserError("--stats-json goes with --input (it totals a file run)")
    if args.prompt is not None and args.continuous_batching:
        raise UserError(
            "--continuous-batching goes with --input (one prompt has no slots to refill)"
        )
    if args.stats_json and Path(args.stats_json).is_dir():
        raise UserError(f"--stats-json {args.stats_json!r} is a directory, expected a file name")
    checks = [
        (args.batch_size >= 1, f"--batch-size {args.batch_size} must be >= 1"),
        (args.max_new_tokens >= 1, f"--max-new-tokens {args.max_new_tokens} must be >= 1"),
        (args.temperature >= 0, f"--temperature {args.temperature} must be >= 0 (0 = greedy)"),
        (0 < args.top_p <= 1, f"--top-p {args.top_p} must be in (0, 1]"),
        (args.top_k >= 0, f"--top-k {args.top_k} must be >= 0 (0 = off)"),
        (args.limit is None or args.limit >= 1, f"--limit {args.limit} must be >= 1"),
        (
            args.check_every is None or args.check_every >= 1,
            f"--check-every {args.check_every} must be >= 1",
        ),
        (all(args.stop), "--stop needs a non-empty string"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    parse_options(args.option)  # syntax errors before any model loads


# ----------------------------------------------------------------------------- generate: set-up


class Session:
    """Model, tokenizer and SamDecoder for one CLI run."""

    def __init__(self, args: argparse.Namespace, device, *, num_reqs: int, max_len: int):
        import torch

        from samgpu import api, resolve

        self.args = args
        self.device = device
        dtype = api.resolve_dtype(args.dtype, device)
        resolve.quiet_transformers()
        t0 = time.perf_counter()
        try:
            self.model, self.tokenizer = api.load_model(args.model, device, dtype)
        except torch.OutOfMemoryError as e:
            raise api.SetupError(
                api.out_of_memory_message(
                    e, batch_size=num_reqs, max_len=max_len, what="loading the model"
                )
            ) from None
        self.load_seconds = time.perf_counter() - t0
        options = parse_options(args.option)
        try:
            self.decoder = api.SamDecoder(
                self.model,
                self.tokenizer,
                args.method,
                api.resolve_index(
                    args.index, self.tokenizer, args.method, progress=not args.no_progress
                ),
                use_cuda_graphs=not args.no_cuda_graphs,
                check_every=args.check_every,
                continuous_batching=args.continuous_batching,
                speculation=args.speculation,
                exact=args.exact,
                stage_range=profiled_range if args.profile else nvtx_range,
                **options,
            )
        except (ValueError, TypeError) as e:
            raise UserError(str(e)) from None
        self.eos = api.eos_ids(self.model, self.tokenizer)
        self.stop_ids = single_token_stops(args.stop, self.tokenizer)
        self.context = self.decoder.context_length()

    def encode(self, prompt: str | None, messages: list[dict] | None) -> list[int]:
        from samgpu.api import encode_chat

        try:
            if messages is not None:
                return encode_chat(self.tokenizer, messages)
            if self.args.raw:
                return list(self.tokenizer(prompt).input_ids)
            return encode_chat(self.tokenizer, [{"role": "user", "content": prompt}])
        except ValueError as e:
            raise UserError(str(e)) from None

    def too_long(self, ids: list[int]) -> str | None:
        if self.context is None or len(ids) + self.args.max_new_tokens <= self.context:
            return None
        return (
            f"prompt of {len(ids)} tokens + --max-new-tokens {self.args.max_new_tokens} exceeds"
            f" the model's context of {self.context} tokens"
        )

    def warm_up(self, num_reqs: int, longest: int) -> None:
        """Allocate the KV cache and buffers now, so out-of-memory shows at set-up with advice."""
        needed = self.decoder.needed_len(longest, self.args.max_new_tokens)
        self.decoder.ensure_capacity(num_reqs, needed)

    def generate(self, prompts: list[list[int]], on_progress=None, on_finish=None):
        from torch.profiler import record_function

        from samgpu import api

        a = self.args
        with record_function("samgpu.cli.generate"):
            return self.decoder.generate_ids(
                prompts,
                max_new_tokens=a.max_new_tokens,
                temperature=a.temperature,
                top_k=a.top_k,
                top_p=a.top_p,
                eos_token_ids=api.eos_with_stops(self.eos, self.stop_ids),
                seed=a.seed,
                on_progress=on_progress,
                on_finish=on_finish,
                batch_size=a.batch_size,
            )


def run_device(args: argparse.Namespace, info=None):
    import torch

    from samgpu import api

    device = api.resolve_device(args.device)
    if info is not None and info.is_distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    return device


def profiler(args: argparse.Namespace, rank_suffix: str):
    """torch.profiler around generation when --profile is set; exports on exit."""
    if not args.profile:
        return contextlib.nullcontext()
    import torch
    from torch.profiler import ProfilerActivity, profile

    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)

    @contextlib.contextmanager
    def run():
        with profile(activities=activities, record_shapes=False) as prof:
            yield prof
        trace = out_dir / f"trace{rank_suffix}.json"
        prof.export_chrome_trace(str(trace))
        sort = "cuda_time_total" if ProfilerActivity.CUDA in activities else "cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=40)
        (out_dir / f"summary{rank_suffix}.txt").write_text(table + "\n")
        print(
            f"samgpu: profiler trace written to {trace} (open in ui.perfetto.dev)", file=sys.stderr
        )

    return run()


@contextlib.contextmanager
def profiled_range(name: str):
    """A decode-step stage as an NVTX range (Nsight) and a torch.profiler range `samgpu.<stage>`
    (the --profile trace), passed to the decoder as its stage_range."""
    from torch.profiler import record_function

    from samgpu.decoding.stages import nvtx_range

    with nvtx_range(name), record_function(f"samgpu.{name}"):
        yield


def oom_error(e: BaseException, args: argparse.Namespace) -> UserError:
    from samgpu import api

    msg = api.out_of_memory_message(
        e, batch_size=args.batch_size, max_len=0, what="generating"
    ).replace(" and 0 tokens per sequence", "")
    if args.input:
        msg += "; finished records are kept and the same command resumes"
    return api.SetupError(msg)


# ----------------------------------------------------------------------------- generate: run


class _Streamer:
    """on_progress -> print the new text of request 0 (decoded in full each time, so that multi-byte
    characters split across tokens print once complete)."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.printed = ""

    def text_of(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if self.stop:
            from samgpu.api import first_stop

            p = first_stop(text, self.stop)
            if p >= 0:
                return text[:p]
            # hold back a tail that could be the start of a stop string
            hold = max(len(s) - 1 for s in self.stop)
            text = text[: max(len(self.printed), len(text) - hold)]
        return text

    def show(self, text: str) -> None:
        if text.endswith("\ufffd"):
            return
        if text.startswith(self.printed) and len(text) > len(self.printed):
            sys.stdout.write(text[len(self.printed) :])
            sys.stdout.flush()
            self.printed = text

    def __call__(self, info: Any) -> None:
        from samgpu.api import progress_tokens

        toks = progress_tokens(info)
        if toks is not None:
            self.show(self.text_of(toks))


def generate_one(args: argparse.Namespace) -> int:
    """`samgpu generate --prompt`: one prompt, streamed to stdout."""
    import torch

    from samgpu.api import make_completion

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise UserError("the prompt is empty: pass some text with --prompt")
    device = run_device(args)
    session = Session(args, device, num_reqs=1, max_len=args.max_new_tokens)
    ids = session.encode(prompt, None)
    reason = session.too_long(ids)
    if reason:
        raise UserError(reason + "; shorten it or lower --max-new-tokens")
    streamer = _Streamer(session.tokenizer, args.stop)
    t0 = time.perf_counter()
    try:
        session.warm_up(1, len(ids))
        with profiler(args, ""):
            out = session.generate([ids], on_progress=streamer)
    except torch.OutOfMemoryError as e:
        raise oom_error(e, args) from None
    seconds = time.perf_counter() - t0
    stats = session.decoder.last_stats[0] if session.decoder.last_stats else {}
    done = make_completion(list(out.tokens[0]), stats, session.tokenizer, session.eos, args.stop)
    if done.text.startswith(streamer.printed):
        sys.stdout.write(done.text[len(streamer.printed) :])
    else:  # the stream showed text that a stop string later cut: print the final text whole
        sys.stdout.write("\n" + done.text)
    sys.stdout.write("\n")
    sys.stdout.flush()
    n = len(done.tokens)
    mat = stats.get("mat")
    mat_txt = f", mean accepted tokens per step {mat:.2f}" if isinstance(mat, (int, float)) else ""
    print(
        f"[{n} tokens in {seconds:.2f} s, {n / max(seconds, 1e-9):.1f} tokens/s{mat_txt};"
        f" method {args.method}, {device.type}; stop: {done.finish_reason}]",
        file=sys.stderr,
    )
    return 0
