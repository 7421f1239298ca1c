"""Resolving what a run needs: device, dtype, model, static index; set-up errors and
out-of-memory messages. Shared by the Python API (samgpu.api re-exports these names) and the CLI;
every failure a user can cause is a UserError (samgpu.errors) with a message naming the fix."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from samgpu.errors import InputError, SetupError
from samgpu.factory import DEFAULT_METHOD

# ----------------------------------------------------------------------------- environment
# The method used when none is given. On a GPU, by the number of sequences decoded together, from
# the batched runs through `samgpu generate` on the mixed prompt file (H200, SmolLM2; README
# "Which method", results/20261130-h200-final-71803f9.jsonl): DEFAULT_METHOD (`merged`) for
# fewer than PLD_MIN_BATCH (2.23x `ar` at B=1; the best of the automaton methods, so also the one
# a --store feeds), `pld` from there (1.74x / 1.52x / 1.48x / 1.23x at B=4 / 16 / 64 / 256,
# `merged` 1.62x / 1.33x / 1.14x / 1.02x: its short chains cost the least drafting per step). On a
# CPU plain decoding: the drafting methods measured slower than `ar` on chat prompts at batch 1
# and 4 (their drafts rarely pay at a CPU's small tree budget, and drafting costs host time;
# profiling/bench_cpu.py).
GPU_BATCH_DEFAULT_METHOD = "pld"
PLD_MIN_BATCH = 4
CPU_DEFAULT_METHOD = "ar"


def default_method(device: torch.device | str, batch_size: int = 1, *, store: bool = False) -> str:
    """The method for `batch_size` sequences at a time on `device` (see above): on CUDA `merged`
    below PLD_MIN_BATCH sequences or with a store, `pld` from there; `ar` on a CPU, `merged` there
    too with a store (which only the automaton methods read)."""
    if torch.device(device).type != "cuda" and not store:
        return CPU_DEFAULT_METHOD
    if batch_size >= PLD_MIN_BATCH and not store:
        return GPU_BATCH_DEFAULT_METHOD
    return DEFAULT_METHOD


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """ "auto" -> cuda when available, else cpu. Asking for CUDA without it is a SetupError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SetupError(
            f"unknown device {str(device)!r}: use auto, cpu, cuda or cuda:N", exit_code=2
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no usable GPU"
            raise SetupError(
                f"CUDA was requested (device {str(device)!r}) but is not available ({build},"
                f" torch {torch.__version__}); use --device cpu, or install a CUDA build of torch"
                " on a machine with an NVIDIA driver"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SetupError(
                f"device {str(device)!r} does not exist: this machine has"
                f" {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise SetupError(f"device type {dev.type!r} is not supported: use cuda or cpu", exit_code=2)
    return dev


_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """ "auto" -> bfloat16 on CUDA (float16 if the card lacks bf16), float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use auto, bfloat16, float16 or float32")
    return _DTYPES[dtype]


def out_of_memory_message(exc: BaseException, *, batch_size: int, max_len: int, what: str) -> str:
    smaller = max(1, batch_size // 2)
    hint = (
        f"try batch size {smaller} (--batch-size {smaller})"
        if batch_size > 1
        else "try a shorter --max-new-tokens, a smaller model, or --dtype bfloat16"
    )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "CUDA out of memory"
    return (
        f"out of GPU memory while {what} for batch size {batch_size} and {max_len} tokens per"
        f" sequence ({first[:160]}); {hint}"
    )


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


# ----------------------------------------------------------------------------- models and indexes


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.pt", "*.gguf")


def checkpoint_dirs(name_or_path: str) -> tuple[str, str]:
    """(model folder, tokenizer folder) of a local checkpoint, or (name, name) for a hub id.

    A folder with config.json and tokenizer files is both. samgpu's converted default (the
    `$SAMGPU_CACHE/<model>/` folder with `model/` and `tokenizer/` inside, or its `model/`
    folder) is accepted as it is. Anything else is a SetupError (exit 2) saying what a model
    folder must hold."""
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~"))
    if not looks_local:
        return name_or_path, name_or_path
    if not path.is_dir():
        raise SetupError(
            f"model {name_or_path!r} not found: pass a local transformers checkpoint folder"
            " (with config.json) or 'default'",
            exit_code=2,
        )
    if (path / "model" / "config.json").is_file() and _has_tokenizer(path / "tokenizer"):
        return str(path / "model"), str(path / "tokenizer")  # a converted-default cache folder
    if (path / "config.json").is_file() and not _has_tokenizer(path):
        if _has_tokenizer(path.parent / "tokenizer"):  # the converted default's model/ folder
            return str(path), str(path.parent / "tokenizer")
    needs = (
        "a model folder holds config.json, the weights (*.safetensors) and the tokenizer files"
        " (tokenizer.json or tokenizer_config.json), as model.save_pretrained(folder) and"
        " tokenizer.save_pretrained(folder) write them; or pass --model default"
    )
    if not (path / "config.json").is_file():
        raise SetupError(f"{name_or_path!r} is not a model folder (no config.json): {needs}", 2)
    if not _has_tokenizer(path):
        raise SetupError(f"model folder {name_or_path!r} has no tokenizer files: {needs}", 2)
    if not any(next(path.glob(p), None) for p in WEIGHT_PATTERNS):
        raise SetupError(f"model folder {name_or_path!r} has no weights: {needs}", 2)
    return str(path), str(path)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def _load_error(what: str, name: str, e: BaseException) -> SetupError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return SetupError(f"could not load {what} {name!r}: {first[:300]}", exit_code=2)


def load_tokenizer(name_or_path: str):
    """The tokenizer of "default" or a checkpoint (see checkpoint_dirs), without the weights:
    what the CLI needs to check prompts and the index before the model loads."""
    if name_or_path == "default":
        from samgpu import models

        try:
            return models.load_default_tokenizer()
        except FileNotFoundError as e:
            raise SetupError(str(e)) from None
    from transformers import AutoTokenizer

    _, tok_dir = checkpoint_dirs(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, ValueError, TypeError) as e:
        raise _load_error("the tokenizer of", name_or_path, e) from None


def context_length(name_or_path: str) -> int | None:
    """config.max_position_embeddings of "default" or a checkpoint, without the weights."""
    if name_or_path == "default":
        from samgpu import models

        try:
            config = models.default_config()
        except FileNotFoundError as e:
            raise SetupError(str(e)) from None
    else:
        from transformers import AutoConfig

        model_dir, _ = checkpoint_dirs(name_or_path)
        try:
            config = AutoConfig.from_pretrained(model_dir)
        except (OSError, ValueError, TypeError) as e:
            raise _load_error("the config of", name_or_path, e) from None
    return getattr(config, "max_position_embeddings", None)


def load_model(name_or_path: str, device: torch.device, dtype: torch.dtype, tokenizer=None):
    """ "default" -> the embedded SmolLM2-135M-Instruct; else a transformers checkpoint (local
    folder or hub id; see checkpoint_dirs). Returns (model, tokenizer), the tokenizer loaded
    unless given; failures are SetupErrors naming the fix."""
    if name_or_path == "default":
        from samgpu import models

        try:
            return models.load_default(device=device, dtype=dtype)
        except FileNotFoundError as e:
            raise SetupError(str(e)) from None
    from transformers import AutoModelForCausalLM

    model_dir, _ = checkpoint_dirs(name_or_path)
    if tokenizer is None:
        tokenizer = load_tokenizer(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    except (OSError, ValueError) as e:
        raise _load_error("model", name_or_path, e) from None
    model.to(device).eval()
    return model, tokenizer


def quiet_transformers() -> None:
    """For the CLI: no transformers weight-loading bars and info logs (they would interleave with
    samgpu's progress bar and streamed text)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def default_index(tokenizer, *, progress: bool = False) -> Path:
    """The embedded corpus's static index for `tokenizer`, built (a few seconds for SmolLM2) and
    cached under $SAMGPU_CACHE on first use."""
    from samgpu.sam.default import build_default_index

    return build_default_index(tokenizer, progress=progress)


def resolve_index(index: Any, tokenizer, method: str, *, progress: bool = False):
    """ "default" | "none" | None | path | SamIndex -> SamIndex or None for `method`. "default" is
    the embedded corpus index (built on first use) for methods that draft from a static index."""
    if index is None or (isinstance(index, str) and index.lower() == "none"):
        return None
    if isinstance(index, str) and index == "default":
        from samgpu.drafters import get_method

        if not get_method(method).needs_index or tokenizer is None:
            return None
        from samgpu.sam.default import load_default_index

        return load_index(load_default_index(tokenizer, progress=progress), tokenizer)
    return load_index(index, tokenizer)


# the index package's own advice (build a new index) is replaced by the CLI-level one below
_INDEX_ADVICE = re.compile(r"[;:,]?\s*build a new index with `samgpu index build[^`]*`[^;]*$")


def load_index(index: Any, tokenizer=None):
    """None | path | SamIndex -> SamIndex or None, checked against `tokenizer` when given."""
    if index is None:
        return None
    from samgpu.sam import SamIndex

    hint = ""
    if not isinstance(index, (SamIndex, str, os.PathLike)):
        raise TypeError(
            f"index must be 'default', None, a path or a SamIndex, got {type(index).__name__}"
        )
    if not isinstance(index, SamIndex):
        path = Path(index).expanduser()
        hint = str(path)
        if not path.is_file():
            raise InputError(
                f"index file {str(index)!r} not found; build one with `samgpu index build`"
                " (see `samgpu index build --help`)"
            )
        try:
            index = SamIndex.load(path)  # validated: no kernel sees an unchecked index
        except (ValueError, OSError, EOFError) as e:
            # the index package's own advice is replaced by ours (which names --index choices)
            detail = _INDEX_ADVICE.sub("", str(e))
            raise InputError(
                f"index {str(path)!r} is corrupt or not a samgpu index ({detail.strip()});"
                " build a new one with `samgpu index build --corpus FILE... --out NEW.samidx`,"
                " or use --index default or --index none"
            ) from None
    else:
        try:
            index.ensure_valid()  # an index built in this process passed already; no second pass
        except ValueError as e:
            raise InputError(f"the SamIndex passed as index is not usable: {e}") from None
    if tokenizer is not None:
        from samgpu.sam.corpus import tokenizer_fingerprint

        try:
            index.check_tokenizer(tokenizer_fingerprint(tokenizer), hint)
        except ValueError as e:
            raise InputError(str(e)) from None
    return index
