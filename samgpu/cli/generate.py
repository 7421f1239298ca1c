"""`samgpu generate`: argument checks, the model session, and one prompt streamed to the terminal.
A JSONL file run (resumable, one process or one per GPU under torchrun) is in samgpu/cli/file.py;
the parser and entry point are in samgpu/cli/__init__.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from samgpu.cli.profile import chain, profiled_range, profiler
from samgpu.decoding.stages import nvtx_range
from samgpu.errors import UserError
from samgpu.files import same_file, unwritable_reason
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
    if args.method is not None and args.method.lower() in methods:
        args.method = args.method.lower()
    if args.method is not None and args.method not in methods:
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
    if args.prompt is not None:  # options of file runs that a single prompt would ignore
        file_only = {
            "--limit": args.limit is not None,
            "--strict": args.strict,
            "--allow-skips": args.allow_skips,
            "--overwrite": args.overwrite,
            "--field": args.field is not None,
            "--output-field": args.output_field != "completion",
        }
        given = [flag for flag, used in file_only.items() if used]
        if given:
            verb = "goes" if len(given) == 1 else "go"
            raise UserError(f"{', '.join(given)} {verb} with --input (a --prompt run ignores it)")
    if args.temperature == 0 and (args.top_k != 0 or args.top_p != 1.0 or args.seed is not None):
        from samgpu.cli.output import warn

        warn("--top-k, --top-p and --seed change nothing with --temperature 0 (greedy decoding)")
    if args.prompt is not None and args.continuous_batching:
        raise UserError(
            "--continuous-batching goes with --input (one prompt has no slots to refill)"
        )
    if args.continuous_batching is None:  # the default: continuous for files
        args.continuous_batching = args.input is not None
    if args.stats_json and Path(args.stats_json).is_dir():
        raise UserError(f"--stats-json {args.stats_json!r} is a directory, expected a file name")
    checks = [
        (args.batch_size >= 1, f"--batch-size {args.batch_size} must be >= 1"),
        (args.max_new_tokens >= 1, f"--max-new-tokens {args.max_new_tokens} must be >= 1"),
        (
            args.temperature >= 0 and math.isfinite(args.temperature),
            f"--temperature {args.temperature} must be a finite number >= 0 (0 = greedy)",
        ),
        (
            args.seed is None or -(2**63) <= args.seed < 2**63,
            f"--seed {args.seed} must fit in 64 bits (-2**63 <= seed < 2**63)",
        ),
        (0 < args.top_p <= 1, f"--top-p {args.top_p} must be in (0, 1]"),
        (args.top_k >= 0, f"--top-k {args.top_k} must be >= 0 (0 = off)"),
        (args.limit is None or args.limit >= 1, f"--limit {args.limit} must be >= 1"),
        (
            args.check_every is None or args.check_every >= 1,
            f"--check-every {args.check_every} must be >= 1",
        ),
        (all(args.stop), "--stop needs a non-empty string"),
        (
            args.threads is None or 1 <= args.threads <= MAX_THREADS,
            f"--threads {args.threads} must be in [1, {MAX_THREADS}]",
        ),
        (args.profile_windows >= 1, f"--profile-windows {args.profile_windows} must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    check_output_field(args)
    parse_options(args.option)  # syntax errors before any model loads
    check_paths(args)


# keys samgpu writes into each output record beside the generated text
RECORD_KEYS: tuple[str, ...] = ("finish_reason", "num_tokens", "stats", "error")
# torch.set_num_threads(100000) fails in the OpenMP runtime (MemoryError): a bound far above any
# machine's cores
MAX_THREADS = 1024


def check_output_field(args: argparse.Namespace) -> None:
    """--output-field must not overwrite the prompt the record was read from, nor a key samgpu
    writes itself (the text would be lost, or would replace the prompt)."""
    if args.input is None:  # (--prompt prints the text)
        return
    from samgpu.inputs import DEFAULT_TEXT_FIELDS, MESSAGES_FIELD

    auto = (*DEFAULT_TEXT_FIELDS, MESSAGES_FIELD)  # read when --field is not given
    out, read = args.output_field, (args.field,) if args.field else auto
    if out in RECORD_KEYS:
        raise UserError(
            f"--output-field {out!r} is a key samgpu writes itself ({', '.join(RECORD_KEYS)});"
            " choose another name"
        )
    if out in read:
        what = "--field" if args.field else f"a prompt field ({', '.join(auto)})"
        raise UserError(
            f"--output-field {out!r} is {what}: the completion would overwrite the prompt;"
            " choose another name"
        )


def _writable_folder(path: Path, what: str) -> None:
    reason = unwritable_reason(path)
    if reason is not None:
        raise UserError(f"{what} {str(path)!r}: {reason}")


def check_paths(args: argparse.Namespace) -> None:
    """Output, --store, --stats-json and --profile paths, before anything is read or written: the
    output is never the input (nor are its side files), the store and the stats file are neither,
    and every folder written to is writable."""
    from samgpu.cli.progress import is_stats_file
    from samgpu.io import lock_path, meta_path, partial_path

    if args.profile:
        prof = Path(args.profile)
        if prof.exists() and not prof.is_dir():
            raise UserError(f"--profile {args.profile!r} is a file; give a folder for the trace")
        _writable_folder(prof / "trace.json", "--profile")
    store = None if args.store is None else Path(args.store)
    if store is not None and not store.is_dir():  # (a folder: refused with the store's checks)
        _writable_folder(store, "--store")
    if args.input is None:
        return
    src, out = Path(args.input), Path(args.output)
    trailing_sep = args.output.endswith(("/", os.sep))  # (Path drops it: "new/" became a file)
    if not out.name or trailing_sep or out.expanduser().is_dir():
        raise UserError(f"--output {args.output!r} is a folder; give the output file's path")
    if same_file(src, out):
        raise UserError(
            f"--output {args.output!r} is the --input file; samgpu never writes over its input:"
            " choose another --output"
        )
    for side, what in ((partial_path(out), "partial"), (lock_path(out), "lock")):
        if same_file(src, side):
            raise UserError(
                f"--input {args.input!r} is where the output's {what} file goes; rename the input"
                " or choose another --output"
            )
    if same_file(src, meta_path(out)):
        raise UserError(f"--input {args.input!r} is the output's fingerprint file")
    if not out.expanduser().absolute().parent.is_dir():
        raise UserError(f"output folder {str(out.parent)!r} does not exist")
    _writable_folder(out, "--output")
    if store is not None and any(
        same_file(store, p) for p in (src, out, partial_path(out), meta_path(out))
    ):
        raise UserError(
            f"--store {args.store!r} is the input or the output (or one of its side files); give"
            " the store its own file"
        )
    if args.stats_json:
        stats = Path(args.stats_json)
        keep = (src, out, partial_path(out), meta_path(out), *([store] if store else []))
        if any(same_file(stats, p) for p in keep):
            raise UserError(f"--stats-json {args.stats_json!r} would overwrite the input or output")
        if stats.is_file() and not is_stats_file(stats):
            raise UserError(
                f"--stats-json {args.stats_json!r} exists and is not a samgpu stats file; samgpu"
                " does not write over other files (an index, notes, ...): give another path"
            )
        _writable_folder(stats, "--stats-json")


# ----------------------------------------------------------------------------- generate: set-up


class Plan:
    """What a run needs and can check before any weights load or any output file exists: the
    drafter options (validated), the tokenizer, the model's context length (its config), the
    static index (loaded, validated, checked against the tokenizer) and the encoded prompts."""

    def __init__(self, args: argparse.Namespace, device):
        from samgpu import api, resolve
        from samgpu.drafters import get_method
        from samgpu.factory import draft_nodes

        self.args = args
        self.device = device
        resolve.quiet_transformers()
        self.options = parse_options(args.option)
        if args.store is not None:
            if not get_method(args.method).needs_index:
                from samgpu.drafters import method_names

                with_store = [m for m in method_names() if get_method(m).needs_index]
                raise UserError(
                    f"--store needs a method that drafts from automata ({', '.join(with_store)});"
                    f" --method {args.method} has no store"
                )
            self.options["store"] = args.store
        try:
            draft_nodes(args.method, 1, device, self.options)  # unknown or bad options
        except (ValueError, TypeError) as e:
            hint = ""
            if getattr(args, "method_is_default", False):
                hint = f" (no --method given: {args.method} is the default here; give --method)"
            raise UserError(f"{e}{hint}") from None
        self.tokenizer = resolve.load_tokenizer(args.model)
        if "store" in self.options:  # store files are checked against the model's tokenizer
            from samgpu.sam import tokenizer_fingerprint

            self.options["store_fingerprint"] = tokenizer_fingerprint(self.tokenizer)
        self.context = resolve.context_length(args.model)
        self.index = api.resolve_index(
            args.index, self.tokenizer, args.method, progress=not args.no_progress
        )
        self.stop_ids = single_token_stops(args.stop, self.tokenizer)

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


class Session:
    """The loaded model and its SamDecoder for one CLI run, from a checked Plan."""

    def __init__(self, plan: Plan, *, num_reqs: int, max_len: int):
        import torch

        from samgpu import api

        args, device = plan.args, plan.device
        self.args = args
        self.device = device
        self.tokenizer = plan.tokenizer
        dtype = api.resolve_dtype(args.dtype, device)
        t0 = time.perf_counter()
        try:
            self.model, _ = api.load_model(args.model, device, dtype, tokenizer=plan.tokenizer)
        except torch.OutOfMemoryError as e:
            raise api.SetupError(
                api.out_of_memory_message(
                    e, batch_size=num_reqs, max_len=max_len, what="loading the model"
                )
            ) from None
        self.load_seconds = time.perf_counter() - t0
        try:
            self.decoder = api.SamDecoder(
                self.model,
                self.tokenizer,
                args.method,
                plan.index,
                use_cuda_graphs=not args.no_cuda_graphs,
                check_every=args.check_every,
                continuous_batching=args.continuous_batching,
                speculation=args.speculation,
                exact=args.exact,
                adaptive_threads=device.type == "cpu" and threads_are_ours(args),
                stage_range=profiled_range if args.profile else nvtx_range,
                **plan.options,
            )
        except (ValueError, TypeError) as e:
            raise UserError(str(e)) from None
        self.eos = api.eos_ids(self.model, self.tokenizer)
        self.stop_ids = plan.stop_ids

    def warm_up(self, num_reqs: int, longest: int) -> None:
        """Allocate the KV cache and buffers now, so out-of-memory shows at set-up with advice,
        and capture the step graphs in the run's sampling mode (kept out of its time)."""
        from samgpu.decoding.config import GenerationConfig

        a = self.args
        needed = self.decoder.needed_len(longest, a.max_new_tokens)
        sampling = GenerationConfig(max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                                    top_k=a.top_k, top_p=a.top_p)  # fmt: skip
        self.decoder.ensure_capacity(num_reqs, needed, sampling)

    def save_store(self) -> None:
        """--store: write the cross-request store (the end of a run, also an interrupted one: the
        next run resumes with it); a failure is a warning, the outputs stand."""
        from samgpu.cli.output import warn

        try:
            path = self.decoder.save_store()
        except (OSError, ValueError) as e:
            warn(f"the cross-request store was not saved: {e}")
            return
        if path is not None:
            print(f"samgpu: store saved to {path}", file=sys.stderr)

    def generate(self, prompts: list[list[int]], on_progress=None, on_finish=None, keys=None):
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
                sample_keys=keys,
                on_progress=on_progress,
                on_finish=on_finish,
                batch_size=a.batch_size,
                stop_when=api.stop_watch(self.tokenizer, a.stop),
            )


def run_device(args: argparse.Namespace, info=None):
    import torch

    from samgpu import api

    device = api.resolve_device(args.device)
    if info is not None and info.is_distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    if device.type == "cpu":
        configure_threads(args.threads, info)
    if args.method is None:  # by the sequences decoded together (one for --prompt)
        batch = 1 if getattr(args, "prompt", None) is not None else args.batch_size
        args.method = api.default_method(device, batch, store=args.store is not None)
        args.method_is_default = True
    return device


def threads_are_ours(args: argparse.Namespace) -> bool:
    """The CLI chooses torch's CPU threads (no --threads, no OMP_NUM_THREADS): then decode steps
    may also run with one thread where that measures faster (GenerationConfig.adaptive_threads);
    a thread count the user set is kept for every step."""
    return args.threads is None and "OMP_NUM_THREADS" not in os.environ


def configure_threads(threads: int | None, info=None) -> int:
    """torch's intra-op threads on CPU: --threads if given; else OMP_NUM_THREADS if set (torch
    read it already); else torch's default (one per physical core), divided among the processes
    of a torchrun group on this host (each would otherwise take every core)."""
    import torch

    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if info is not None else 1
        threads = max(1, torch.get_num_threads() // max(local, 1))
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def oom_error(e: BaseException, args: argparse.Namespace) -> UserError:
    from samgpu import api

    msg = api.out_of_memory_message(
        e, batch_size=args.batch_size, max_len=0, what="generating"
    ).replace(" and 0 tokens per sequence", "")
    if args.input:
        msg += "; the same command resumes after the records that finished"
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
    plan = Plan(args, device)
    ids = plan.encode(prompt, None)
    reason = plan.too_long(ids)
    if reason:
        raise UserError(reason + "; shorten it or lower --max-new-tokens")
    session = Session(plan, num_reqs=1, max_len=args.max_new_tokens)
    streamer = _Streamer(session.tokenizer, args.stop)
    t0 = time.perf_counter()
    try:
        session.warm_up(1, len(ids))
        with profiler(args, "") as prof:
            out = session.generate([ids], on_progress=chain(streamer, prof.step))
    except torch.OutOfMemoryError as e:
        raise oom_error(e, args) from None
    finally:
        session.save_store()
    seconds = time.perf_counter() - t0
    stats = session.decoder.last_stats[0] if session.decoder.last_stats else {}
    done = make_completion(
        list(out.tokens[0]), stats, session.tokenizer, session.eos, args.stop, session.stop_ids
    )
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
    prof.report()
    return 0
