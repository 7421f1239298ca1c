"""`samgpu.generate`: completions in one call, on a model and decoder cached per process (the
one-liner over samgpu.api.SamDecoder)."""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from samgpu import api
from samgpu.hf_args import check_count, check_types, single_token_stops


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
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
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
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    eos = api.eos_ids(dec.model, tok)
    if stop is not None and not isinstance(stop, (str, Sequence)):
        raise TypeError(f"stop must be a string or a list of strings, got {stop!r}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(x, str) or not x for x in stops):
        raise ValueError(f"stop strings must be non-empty strings, got {stops!r}")
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
    )
    if "store" in options:
        dec.save_store()
    results = [
        api.make_completion(list(t), s, tok, eos, stops, stop_ids)
        for t, s in zip(out.tokens, dec.last_stats or [{}] * len(out.tokens), strict=True)
    ]
    return results[0] if single else results
