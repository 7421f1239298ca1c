"""The `samgpu` command (console script and `python -m samgpu`).

  samgpu generate --prompt "Name three primes."                 # one prompt, streamed
  samgpu generate --input prompts.jsonl --output out.jsonl      # batched, resumable
  torchrun --nproc-per-node 8 -m samgpu generate --input ... --output ...   # one process per GPU
  samgpu index build | stats PATH                               # static SAM index (samgpu.sam.cli)
  samgpu bench ...                                              # profiling.bench_e2e (a checkout)

Errors a user can cause (missing or malformed input, unknown method or option, CUDA unavailable,
out of memory at set-up, a corrupt index or one built for another tokenizer, a file system refusing
a write, ...) print one line `samgpu: error: ...` naming the fix, with no traceback, and exit with
status 2 (usage or input) or 1 (environment); Ctrl-C and SIGTERM say what was kept (130, 143). An
`--input` run checks everything it can before creating any file; interrupted or failed later, it
leaves only `<output>.partial` (never a final file that looks complete), and the same command
resumes it. A final output is done only for the input and settings of its fingerprint
(`<output>.samgpu.json`); a run whose output has skipped records exits 3 unless --allow-skips.

`--profile DIR` wraps generation in torch.profiler and writes a Chrome/Perfetto trace
(`DIR/trace[-rankN].json.gz`, open in https://ui.perfetto.dev) in which the decode loop's stages
appear as named ranges, plus `DIR/summary[-rankN].txt`, the top operators by time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import textwrap
from pathlib import Path

from samgpu.cli.output import error, library_warnings_as_lines
from samgpu.errors import EXIT_ENVIRONMENT, EXIT_USAGE, UserError

# ----------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (argparse's ArgumentDefaultsHelpFormatter, but
    not for flags, whose default is always off, nor twice); the epilog keeps its line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreConstAction) or not action.option_strings:
            return text  # store_true / store_false flags, positionals
        default = action.default
        if default is None or default == []:
            said = "(none:" in text or "(default" in text
            return text if said else text + " (default: none)"
        return text + " (default: %(default)s)"


def _methods_epilog() -> str:
    from samgpu.drafters import get_method, method_names

    lines = ["methods (--method) and their options (-O KEY=VALUE):"]
    for name in method_names():
        m = get_method(name)
        opts = ", ".join(f.name for f in dataclasses.fields(m.options)) if m.options else ""
        text = m.summary + ("; drafts from the static --index" if m.needs_index else "")
        if opts:
            text += f". Options: {opts}"
        lines += textwrap.wrap(text, 90, initial_indent=f"  {name:9} ", subsequent_indent=" " * 12)
    lines += [
        "",
        "exit status: 0 done; 3 done, but some records were skipped (0 with --allow-skips);",
        "2 a mistake in the command or input; 1 the environment (CUDA, memory); 130/143 stopped",
        "(Ctrl-C / SIGTERM: finished records are kept and the same command resumes).",
    ]
    return "\n".join(lines)


def _add_generate_parser(subparsers) -> argparse.ArgumentParser:
    from samgpu.drafters import method_names
    from samgpu.factory import DEFAULT_METHOD
    from samgpu.resolve import CPU_DEFAULT_METHOD, GPU_BATCH_DEFAULT_METHOD, PLD_MIN_BATCH

    p = subparsers.add_parser(
        "generate",
        help="generate text for one prompt or a JSONL file of prompts",
        description="Generate with lossless speculative decoding. One --prompt is streamed to "
        "stdout; --input/--output runs a JSONL file in batches, resumably.",
        epilog=_methods_epilog(),
        formatter_class=_HelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt (chat template applied unless --raw); - = stdin")
    src.add_argument("--input", metavar="JSONL", help="prompts, one JSON object per line")
    p.add_argument(
        "--output", metavar="JSONL", help="results, in input order (with --input; required)"
    )
    p.add_argument(
        "--field",
        default=None,
        help="input field holding the prompt text or chat messages (none: prompt, text, then"
        " messages)",
    )
    p.add_argument(
        "--output-field", default="completion", help="output field for the generated text"
    )
    p.add_argument("--raw", action="store_true", help="no chat template for plain-text prompts")
    p.add_argument(
        "--model",
        default="default",
        help="'default' (SmolLM2-135M-Instruct, float32 on CPU) or a local transformers checkpoint"
        " folder (config.json, weights, tokenizer files)",
    )
    p.add_argument(
        "--method",
        default=None,
        metavar="{" + ",".join(method_names()) + "}",
        help=f"drafting method, listed below (none: on CUDA {DEFAULT_METHOD} for --prompt, a"
        f" --batch-size below {PLD_MIN_BATCH} or --store, else {GPU_BATCH_DEFAULT_METHOD};"
        f" {CPU_DEFAULT_METHOD} on a CPU, where drafting seldom pays)",
    )
    p.add_argument(
        "--index",
        default="default",
        help="static SAM index: 'default' (embedded corpus, built on first use), 'none', or a path",
    )
    p.add_argument(
        "--store",
        metavar="PATH",
        default=None,
        help="cross-request store file: loaded if it exists, saved at the end (methods that draft"
        " from automata; each finished response is appended and later requests draft from it;"
        " -O store_tokens=N sets its budget)",
    )
    p.add_argument(
        "-O",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="drafter option, e.g. -O l_threshold=5 (repeatable; each method's options are"
        " listed below)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="sequences decoded together")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1 = off")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (none: a fresh one)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:N or cpu")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch on --device cpu (none: OMP_NUM_THREADS if set, else torch's,"
        " one per physical core)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N input records")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail on an empty or over-long prompt instead of skipping it with a warning",
    )
    p.add_argument(
        "--allow-skips",
        action="store_true",
        help="exit status 0 even when records were skipped (else 3)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output (and its partial file) instead of refusing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--check-every",
        type=int,
        default=None,
        help="steps between host checks / progress calls (default 8; batch 1: 1 on CPU, 4 on GPU)",
    )
    p.add_argument(
        "--continuous-batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --input (the default there): a finished request's slot takes the next waiting"
        " prompt; --no-continuous-batching runs static batches, each until its longest request"
        " ends",
    )
    p.add_argument(
        "--speculation",
        choices=["adaptive", "always"],
        default="adaptive",
        help="adaptive: plain AR steps while drafting does not pay (measured as it runs; one"
        " sequence on a GPU drafts every step, measured faster there); always: draft every step",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="batch- and tree-invariant forward: bfloat16 outputs equal ar's and do not depend on"
        " the batch (Llama-family models)",
    )
    p.add_argument("--no-cuda-graphs", action="store_true", help="run the step eagerly")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="write a torch profiler trace of the first --profile-windows host-check windows"
        " to DIR",
    )
    p.add_argument(
        "--profile-windows",
        type=int,
        default=4,
        help="with --profile: windows of --check-every steps traced (the trace grows with each)",
    )
    p.add_argument(
        "--stats-json",
        metavar="PATH",
        help="with --input: write the run's totals (tokens, seconds, tokens/s, GPUs) as JSON",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samgpu",
        description="GPU-resident lossless speculative decoding with suffix automata.",
    )
    from samgpu import __version__

    parser.add_argument("--version", action="version", version=f"samgpu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate_parser(sub)
    try:
        from samgpu.sam.cli import add_index_parser
    except ImportError:
        add_index_parser = None
    if add_index_parser is not None:
        add_index_parser(sub)
    from samgpu.cli.store import add_store_parser

    add_store_parser(sub)
    from samgpu.cli.eagle import add_eagle_parser

    add_eagle_parser(sub)
    bench = sub.add_parser(
        "bench",
        help="end-to-end benchmark (profiling.bench_e2e; results in --out, default ./)",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, torchrun stopping its workers), raised in the main thread so
    that it ends a run the way Ctrl-C does: records already finished are kept, and a message says
    so."""


# The signal that ended the run, set by the handler before it raises: where it raised inside a
# library's C callback, the library swallows it ("Exception ignored ...") and fails with its own
# error instead (numba compiling the index build's kernels when SIGTERM came: "RuntimeError: no
# compiled object yet"); main reports that as the signal, not as a traceback.
_signal_received: list[str] = []


@contextlib.contextmanager
def _sigterm_ends_the_run():
    import signal
    import threading

    _signal_received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _signal_received.append("SIGTERM")
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _kept(args) -> str:
    """What an ended file run leaves: the records its partial file holds, or nothing."""
    output = getattr(args, "output", None)
    if not output:
        return ""
    from samgpu.io import num_partial_records

    num = num_partial_records(output)
    if num is None:  # (stopped before the run began writing)
        return f"; nothing was written to {output} yet"
    if num == 0:
        return "; no record had finished, so none was kept; the same command starts again"
    records = "1 finished record" if num == 1 else f"{num} finished records"
    return f"; {records} kept in {output}.partial; the same command resumes"


def cpu_threading_defaults() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the user set it, before torch (and its OpenMP runtime)
    loads. torch's CPU threads otherwise spin-wait for each other at the end of every parallel
    op; when another process holds a core, the waiting thread spins while the one it waits for
    is descheduled, and a 2-core machine under load runs 10-50x slower (a 576x1536 linear: 0.3
    ms with one thread, 16 ms with two; profiling/bench_cpu.py and the README's CPU section).
    Passive threads sleep instead, at a small cost when the cores are free."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark's own parser
        from samgpu.cli.bench import run_bench

        return run_bench(argv[1:])
    cpu_threading_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    with _sigterm_ends_the_run(), library_warnings_as_lines():
        try:
            return _run(parser, args)
        except UserError as e:
            error(str(e))
            return e.exit_code
        except KeyboardInterrupt as e:
            if isinstance(e, Terminated):
                return _terminated(args)
            error(f"interrupted{_kept(args)}")
            return 130
        except OSError as e:  # a file system refusing a write mid-run: one line, not a traceback
            if _signal_received:
                return _terminated(args)
            where = f" ({e.filename})" if e.filename else ""
            error(f"{e.strerror or e}{where}{_kept(args)}")
            return EXIT_ENVIRONMENT
        except Exception:
            if _signal_received:  # (the signal, swallowed by a library that then failed)
                return _terminated(args)
            raise


def _terminated(args) -> int:
    error(f"terminated (SIGTERM){_kept(args)}")
    return 128 + 15


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "generate":
        from samgpu.cli.generate import check_args, generate_one

        check_args(args)
        if args.prompt is not None:
            return generate_one(args)
        from samgpu.cli.file import generate_file

        return generate_file(args)
    if args.command == "index":
        from samgpu.sam.cli import run_index

        return run_index(args, load_tokenizer=load_tokenizer)
    if args.command == "store":
        from samgpu.cli.store import run_store

        return run_store(args)
    if args.command == "eagle":
        from samgpu.cli.eagle import run_eagle

        return run_eagle(args)
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


def load_tokenizer(name: str):
    """`samgpu index build --tokenizer` loader: 'default' or a local tokenizer folder."""
    if name == "default":
        from samgpu.models import load_default_tokenizer

        try:
            return load_default_tokenizer()
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
    if not Path(name).expanduser().is_dir():
        raise ValueError(f"tokenizer {name!r} not found: pass 'default' or a local folder")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load tokenizer {name!r}: {e}") from None
