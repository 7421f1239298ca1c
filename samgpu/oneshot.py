"""`samgpu.generate`: completions in one call, on a model and decoder cached per process (the
one-liner over samgpu.api.SamDecoder)."""

from __future__ import annotations

import functools
import os
import threading
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

from samgpu import api
from samgpu.hf_args import (
    UNSUPPORTED,
    check_count,
    check_types,
    config_values,
    is_neutral,
    single_token_stops,
    stop_tuple,
)

# max_new_tokens when neither the call nor model.generation_config sets it
DEFAULT_MAX_NEW_TOKENS = 256


@functools.lru_cache(maxsize=2)
def _cached_model(model: str, device: str, dtype: str):
    """(model, tokenizer) by name, device and dtype: loaded once per process, whatever method."""
    dev = api.resolve_device(device)
    return api.load_model(model, dev, api.resolve_dtype(dtype, dev))


# model -> {(method, index, options): SamDecoder}: one decoder (KV cache, graphs) per method, kept
# while the model lives
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DECODERS_LOCK = threading.Lock()


def _cached_decoder(model, tokenizer, method: str, index: Any, options: dict[str, Any]):
    key_index = str(index) if isinstance(index, os.PathLike) else index
    key = (method, key_index, tuple(sorted(options.items())), id(tokenizer))
    with _DECODERS_LOCK:
        per_model = _DECODERS.setdefault(model, {})
        decoder = per_model.get(key)
    if decoder is None:
        decoder = api.SamDecoder(model, tokenizer, method, index, **options)
        with _DECODERS_LOCK:
            decoder = per_model.setdefault(key, decoder)
    return decoder


def generate(
    prompts: str | Sequence[str] | Sequence[Sequence[dict]],
    model: Any = "default",
    *,
    method: str | None = None,
    index: Any = "default",
    tokenizer: Any = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    raw: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | None = None,
    **options: Any,
) -> api.Completion | list[api.Completion]:
    """Generate completions with samgpu in one call.

    prompts: a string, a list of strings, or a list of chat conversations. Plain strings get the
    model's chat template (as a single user turn) unless raw=True. model: "default" (the embedded
    SmolLM2-135M-Instruct), a local transformers checkpoint path, or a loaded model (then pass
    tokenizer=). A model named by a string is loaded once per process (per device and dtype), and
    one decoder per model and method is kept, so calls with other methods reuse both. method:
    None = default_method(device, the prompts decoded together). index: "default" (the embedded
    corpus's index for the model's tokenizer, built and cached on first use), None, a path or a
    SamIndex. temperature 0 is greedy. Returns a Completion (for a string) or a list of them;
    `Completion.stats` has the per-request statistics. With store=PATH (a cross-request store) the
    store is saved there after the call.

    The model's generation_config fills what the call leaves None, as in SamDecoder.generate and
    transformers: max_new_tokens; do_sample with its temperature, top_k and top_p (without
    do_sample: greedy); and the ids that end a response (eos_token_id, else the tokenizer's EOS).
    What it does not set either falls back to 256 new tokens, greedy, top_k 0 (off) and top_p 1
    (not transformers' global defaults of 20 tokens and top_k 50); its max_length (which counts
    the prompt) is not read. Settings samgpu cannot apply (repetition_penalty, ...) are left out
    with a warning (SamDecoder.generate refuses them).

    >>> samgpu.generate("Name three primes.", max_new_tokens=32).text  # doctest: +SKIP
    """
    single = isinstance(prompts, str)
    if isinstance(prompts, (dict, bytes)) or not (single or isinstance(prompts, Sequence)):
        raise TypeError(
            "prompts must be a string, a list of strings or a list of chat conversations (lists of"
            f" {{'role', 'content'}} dicts), got {type(prompts).__name__}"
        )
    items = [prompts] if single else list(prompts)
    if max_new_tokens is not None:
        check_count("max_new_tokens", max_new_tokens)
    if batch_size is not None:
        check_count("batch_size", batch_size)
    for i, p in enumerate(items):
        if not isinstance(p, str):
            api.check_conversation(p, f"prompt {i} must be a string or")
    check_types(
        {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed},
        none_is_unset=True,
    )
    if isinstance(model, str):
        model, tokenizer = _cached_model(model, str(device), str(dtype))
    elif tokenizer is None:
        raise ValueError("a loaded model needs tokenizer= as well")
    width = min(len(items), batch_size or len(items))  # sequences decoded together
    where = next(model.parameters()).device
    method = method or api.default_method(where, width, store="store" in options)
    dec = _cached_decoder(model, tokenizer, method, index, options)
    tok = dec.tokenizer
    encoded = []
    for i, p in enumerate(items):
        if isinstance(p, str):
            if not p.strip():
                raise ValueError(f"prompt {i} is empty")
            if raw:
                encoded.append(list(tok(p).input_ids))
            else:
                encoded.append(api.encode_chat(tok, [{"role": "user", "content": p}]))
        else:
            encoded.append(api.encode_chat(tok, list(p)))
    max_new_tokens, temperature, top_k, top_p = _fill_from_generation_config(
        dec.model, max_new_tokens, temperature, top_k, top_p
    )
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    eos = api.eos_ids(dec.model, tok)
    stops = stop_tuple(stop)
    stop_ids = single_token_stops(stops, tok)
    out = dec.generate_ids(
        encoded,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_ids=api.eos_with_stops(eos, stop_ids),
        seed=seed,
        batch_size=batch_size,
        stop_when=api.stop_watch(tok, stops),
    )
    if "store" in options:
        dec.save_store()
    results = [
        api.make_completion(list(t), s, tok, eos, stops, stop_ids)
        for t, s in zip(out.tokens, dec.last_stats or [{}] * len(out.tokens), strict=True)
    ]
    return results[0] if single else results


def _fill_from_generation_config(model, max_new_tokens, temperature, top_k, top_p) -> tuple:
    """(max_new_tokens, temperature, top_k, top_p): each one the call left None from
    model.generation_config where it sets it, else generate's own default (its docstring)."""
    cfg = config_values(getattr(model, "generation_config", None))
    unapplied = [f"{k}={v!r}" for k, v in cfg.items() if k in UNSUPPORTED and not is_neutral(k, v)]
    if unapplied:
        warnings.warn(
            f"samgpu.generate does not apply model.generation_config's {', '.join(unapplied)}",
            stacklevel=3,
        )
    if max_new_tokens is None:
        max_new_tokens = cfg.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if temperature is None:  # transformers samples only with do_sample
        temperature = float(cfg.get("temperature", 1.0)) if cfg.get("do_sample") else 0.0
    top_k = cfg.get("top_k", 0) if top_k is None else top_k
    top_p = cfg.get("top_p", 1.0) if top_p is None else top_p
    return max_new_tokens, temperature, top_k, top_p
