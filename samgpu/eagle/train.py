"""Train an EAGLE head for a target model on the target's own hidden states over its own responses.

    python -m samgpu.eagle.train --out smollm2.eagle.safetensors        # default model and data
    samgpu eagle train --out head.safetensors --model PATH --minutes 10  # the same, as a subcommand

Steps: read the responses (samgpu.eagle.data: chat-templated prompt + response + EOS, cut to
--max-len, a deterministic --val-share held out); run the frozen target over every sequence once
and keep its last hidden states on the device (samgpu.eagle.features); train a fresh head on them
(samgpu.eagle.loop) until --epochs or --minutes runs out; write the head (save_head, with the
target's name and sizes and the run's provenance) and `<out>.sha256` (`sha256sum` format, so
`sha256sum -c` checks it in its folder); print one JSON line on stdout with the numbers.
Progress goes to stderr (a line every ~10 s). A mistake in the command or its files is one line
`samgpu: error: ...` and exit status 2; the environment (CUDA, memory) exit status 1.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from samgpu.eagle.data import (
    DEFAULT_DATA,
    VAL_SHARE,
    encode_records,
    file_sha256,
    read_records,
    split_indices,
)
from samgpu.eagle.features import extract_features
from samgpu.eagle.loop import TrainConfig, train_head
from samgpu.eagle.objective import evaluate
from samgpu.errors import InputError, SetupError, UserError
from samgpu.files import same_file, unwritable_reason

FEATURE_BATCH_FACTOR = 4  # the target's feature pass keeps no graph: larger batches, fewer calls
OPTIONS: list[tuple[str, dict]] = [
    ("--out", dict(required=True, metavar="PATH", help="the head file to write (safetensors)")),
    (
        "--model",
        dict(
            default="default",
            help="'default' (SmolLM2-135M-Instruct) or a local"
            " transformers Llama-family checkpoint folder (weights and tokenizer)",
        ),
    ),
    (
        "--data",
        dict(
            default=None,
            metavar="JSONL",
            help="responses: JSONL (.gz) records with"
            f" 'instruction' and 'response' (none: the shipped {DEFAULT_DATA.name})",
        ),
    ),
    ("--minutes", dict(type=float, default=4.0, help="wall-clock budget of the training loop")),
    ("--epochs", dict(type=float, default=20.0, help="passes over the training responses")),
    ("--max-steps", dict(type=int, default=None, help="optimizer steps at most (none: no limit)")),
    ("--max-len", dict(type=int, default=1024, help="tokens per sequence (prompt + response)")),
    ("--max-responses", dict(type=int, default=None, help="only the first N records (none: all)")),
    ("--val-share", dict(type=float, default=VAL_SHARE, help="share of responses held out")),
    (
        "--tokens-per-batch",
        dict(
            type=int,
            default=16384,
            help="padded tokens per training step (the feature pass: 4x as many)",
        ),
    ),
    ("--lr", dict(type=float, default=5e-4, help="peak learning rate (AdamW, cosine decay)")),
    ("--warmup-steps", dict(type=int, default=100, help="linear warm-up steps")),
    (
        "--noise",
        dict(
            type=float,
            default=0.0,
            help="uniform noise on the input features during"
            " training, in feature standard deviations (EAGLE's; 0 = off)",
        ),
    ),
    ("--seed", dict(type=int, default=0, help="head initialisation and batch order")),
    (
        "--save-dtype",
        dict(
            default="bfloat16",
            choices=["bfloat16", "float32"],
            help="dtype of the"
            " saved tensors (bfloat16: half the file; the reported val numbers are"
            " the saved head's)",
        ),
    ),
    ("--device", dict(default="auto", help="auto (CUDA if available), cuda, cuda:N or cpu")),
    (
        "--dtype",
        dict(
            default="auto",
            choices=["auto", "bfloat16", "float32"],
            help="the target's features and the autocast dtype; auto: bfloat16 on CUDA,"
            " float32 on CPU",
        ),
    ),
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (or says what none means)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is argparse.SUPPRESS or action.required or not action.option_strings:
            return text
        if "%(default)" in text:
            return text
        if action.default is None:
            return text if "(none:" in text else text + " (default: none)"
        return text + " (default: %(default)s)"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, kwargs in OPTIONS:
        parser.add_argument(flag, **kwargs)


def command_line(args: argparse.Namespace) -> str:
    """The run as one `samgpu eagle train` command, every option spelled out."""
    words = ["samgpu", "eagle", "train"]
    for flag, _ in OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def log(msg: str) -> None:
    print(f"eagle: {msg}", file=sys.stderr, flush=True)


def _check(args: argparse.Namespace) -> None:
    if args.max_len < 2:
        raise InputError(f"--max-len must be at least 2, got {args.max_len}")
    if args.max_responses is not None and args.max_responses < 2:
        raise InputError(
            f"--max-responses must be at least 2 (one is held out), got {args.max_responses}"
        )
    if not 0 < args.val_share < 1:
        raise InputError(f"--val-share must be between 0 and 1, got {args.val_share}")
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {args.out!r} is a folder: give the head file's path")
    data = Path(args.data) if args.data else DEFAULT_DATA
    if same_file(out, data):
        raise InputError(f"--out {args.out!r} is the --data file: give the head its own file")
    reason = unwritable_reason(out)  # (checked now, not after minutes of training)
    if reason is not None:
        raise InputError(f"--out {args.out!r}: {reason}")
    for flag, value in (("--lr", args.lr), ("--noise", args.noise)):
        if not math.isfinite(value):
            raise InputError(f"{flag} must be a finite number, got {value}")


def _target_name(model_arg: str) -> str:
    if model_arg == "default":
        from samgpu.models import GGUF_NAME

        return GGUF_NAME.removesuffix(".gguf")
    return Path(model_arg).expanduser().resolve().name


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _load_target(args, device: torch.device, dtype: torch.dtype):
    from samgpu.completions import eos_ids
    from samgpu.resolve import load_model, quiet_transformers

    quiet_transformers()
    model, tokenizer = load_model(args.model, device, dtype)
    if not hasattr(model, "model") or not hasattr(model.config, "num_attention_heads"):
        raise InputError(
            f"model {args.model!r} ({type(model).__name__}) is not a Llama-family"
            " causal LM (model.model, num_attention_heads): the EAGLE head needs one"
        )
    eos = eos_ids(model, tokenizer)
    if not eos:
        raise InputError(f"model {args.model!r} has no EOS id (generation config or tokenizer)")
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer, eos[0]


def run(args: argparse.Namespace) -> int:
    """`samgpu eagle train` (module doc); UserErrors for the caller to print."""
    from samgpu.drafters.parts.eagle_model import head_for_target, save_head
    from samgpu.resolve import is_oom, resolve_device, resolve_dtype

    started = time.perf_counter()
    _check(args)
    cfg = TrainConfig(
        lr=args.lr,
        epochs=args.epochs,
        minutes=args.minutes,
        max_steps=args.max_steps,
        tokens_per_batch=args.tokens_per_batch,
        warmup_steps=args.warmup_steps,
        noise=args.noise,
        seed=args.seed,
    )
    data = Path(args.data) if args.data else DEFAULT_DATA
    records = read_records(data)[: args.max_responses]
    if len(records) < 2:
        raise InputError(f"{data}: {len(records)} record(s); training needs at least 2")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model, tokenizer, eos = _load_target(args, device, dtype)
    max_len = min(args.max_len, int(getattr(model.config, "max_position_embeddings", args.max_len)))
    try:
        examples = encode_records(records, tokenizer, eos, max_len)
    except ValueError as e:
        raise InputError(f"model {args.model!r}: {e}") from None
    train_ids, val_ids = split_indices(len(records), args.val_share)
    train_ex = [examples[i] for i in train_ids if examples[i] is not None]
    val_ex = [examples[i] for i in val_ids if examples[i] is not None]
    if not train_ex or not val_ex:
        raise InputError(
            f"no response left to {'train on' if not train_ex else 'validate on'}"
            f" after cutting to {max_len} tokens: raise --max-len"
        )
    log(
        f"{len(records)} responses from {data.name}: {len(train_ex)} train, {len(val_ex)} val,"
        f" max_len {max_len}, target {args.model} on {_device_name(device)} ({dtype})"
    )
    try:
        t0 = time.perf_counter()
        feature_tokens = FEATURE_BATCH_FACTOR * args.tokens_per_batch
        feats = [
            extract_features(model, ex, tokens_per_batch=feature_tokens, log=log)
            for ex in (train_ex, val_ex)
        ]
        log(
            f"features: {feats[0].num_tokens + feats[1].num_tokens} tokens in"
            f" {time.perf_counter() - t0:.1f} s"
        )
        head = head_for_target(model, dtype=torch.float32, seed=args.seed)
        target = {
            "name": _target_name(args.model),
            "vocab_size": int(head.model.lm_head.weight.shape[0]),
            "hidden_size": int(model.config.hidden_size),
        }
        del model
        amp_dtype = dtype if device.type == "cuda" and dtype != torch.float32 else None
        result = train_head(head, feats[0], feats[1], cfg, amp_dtype=amp_dtype, log=log)
        save_dtype = torch.bfloat16 if args.save_dtype == "bfloat16" else torch.float32
        if save_dtype != torch.float32:  # measure the head as it will be loaded
            with torch.no_grad():
                for p in head.trainable().values():
                    p.copy_(p.to(save_dtype))
            result.val = evaluate(
                head, feats[1], tokens_per_batch=args.tokens_per_batch, amp_dtype=amp_dtype
            )
            log(
                f"saved as {args.save_dtype}: val top1 {result.val['top1']:.4f}"
                f" top5 {result.val['top5']:.4f} loss {result.val['loss']:.4f}"
            )
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_oom(e):
            raise
        raise SetupError(
            f"out of GPU memory (--tokens-per-batch {args.tokens_per_batch}): try"
            f" --tokens-per-batch {args.tokens_per_batch // 2}"
        ) from None
    if not math.isfinite(result.val["loss"]):
        raise InputError(
            f"training diverged (validation loss {result.val['loss']}); nothing was written: lower"
            " --lr"
        )
    provenance = {
        "command": command_line(args),
        "data": data.name,
        "data_sha256": file_sha256(data),
        "responses_train": len(train_ex),
        "responses_val": len(val_ex),
        "tokens_train": feats[0].num_tokens,
        "tokens_val": feats[1].num_tokens,
        "pairs_seen": result.pairs_seen,
        "steps": result.steps,
        "epochs_done": result.epochs_done,
        "stopped_by": result.stopped_by,
        "seconds": result.seconds,
        "total_seconds": round(time.perf_counter() - started, 1),
        "device": _device_name(device),
        "gpu_peak_gib": (
            round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if device.type == "cuda"
            else None
        ),
        "dtype": str(dtype).removeprefix("torch."),
        "saved_dtype": args.save_dtype,
        "torch": torch.__version__,
        "transformers": importlib.metadata.version("transformers"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **{f"val_{k}": round(v, 5) for k, v in result.val.items() if k != "pairs"},
        "val_pairs": result.val["pairs"],
        **{f"untrained_val_{k}": round(result.untrained[k], 5) for k in ("top1", "top5", "loss")},
        "history": [
            {k: round(v, 5) if isinstance(v, float) else v for k, v in h.items()}
            for h in result.history
        ],
    }
    out = Path(args.out)
    save_head(out, head, target=target, provenance=provenance, dtype=save_dtype)
    digest = write_sha256(out)
    print(
        json.dumps(
            {
                "out": str(out),
                "sha256": digest,
                "target": target,
                **{k: v for k, v in provenance.items() if k != "history"},
            }
        ),
        flush=True,
    )
    return 0


def write_sha256(path: Path) -> str:
    """`<path>.sha256`: "<hex>  <file name>" (sha256sum's format); returns the hex digest."""
    from samgpu.files import atomic_write

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    line = f"{digest}  {path.name}\n".encode()
    atomic_write(path.with_name(path.name + ".sha256"), lambda f: f.write(line))
    return digest


def build_parser(prog: str = "python -m samgpu.eagle.train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    add_train_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"samgpu: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("samgpu: error: interrupted (no head written)", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
