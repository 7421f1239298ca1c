"""transformers `generate` arguments -> what samgpu runs (transformers' precedence and defaults),
and stop strings.

Precedence (as in transformers): the call's arguments, then a `generation_config` passed to the call
or the model's own, then transformers' global defaults (`GenerationConfig._get_default_generation_
params`: max_length 20 -> 20 new tokens, top_k 50 when sampling, temperature 1). Arguments whose
non-neutral value would change the result and that samgpu cannot honour raise ValueError, naming
where the value came from (the call, or model.generation_config) and the fix; unknown names, and
values of the wrong type (ARG_TYPES: `seed=1.5`, `max_new_tokens="5"`), raise TypeError. Arguments
without effect on the result (beam-search-only or implementation choices) are accepted.

Example: resolve_request(model, {"do_sample": True}, prompt_lens=[4]) -> GenerationRequest(
max_new_tokens=20, temperature=1.0, top_k=50, top_p=1.0, ...); {"num_beams": 4} -> ValueError.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# transformers' global generation defaults (GenerationConfig._get_default_generation_params), used
# when neither the call nor model.generation_config sets a value.
HF_DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
}

# Arguments whose non-default value would change the result and which samgpu cannot honour:
# name -> the neutral value(s) that are accepted.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "num_beams": (None, 1),
    "num_beam_groups": (None, 1),
    "num_return_sequences": (None, 1),
    "diversity_penalty": (None, 0.0),
    "penalty_alpha": (None,),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "force_words_ids": (None,),
    "sequence_bias": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "min_p": (None,),
    "typical_p": (None, 1.0),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
    "top_h": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "token_healing": (None, False),
    "dola_layers": (None,),
    "max_time": (None,),
    "return_dict_in_generate": (None, False),
    "output_scores": (None, False),
    "output_logits": (None, False),
    "output_attentions": (None, False),
    "output_hidden_states": (None, False),
    "logits_processor": (None,),
    "stopping_criteria": (None,),
    "prefix_allowed_tokens_fn": (None,),
    "assistant_model": (None,),
    "prompt_lookup_num_tokens": (None,),
    "negative_prompt_ids": (None,),
    "negative_prompt_attention_mask": (None,),
    "past_key_values": (None,),
    "inputs_embeds": (None,),
    "synced_gpus": (None, False),
    "use_cache": (None, True),
}
# Accepted and without effect on the result (beam-search-only or implementation choices).
NO_EFFECT = {
    "length_penalty",
    "early_stopping",
    "cache_implementation",
    "cache_config",
    "low_memory",
    "bos_token_id",
    "decoder_start_token_id",
    "num_assistant_tokens",
    "num_assistant_tokens_schedule",
    "assistant_confidence_threshold",
    "compile_config",
    "disable_compile",
}
UNSUPPORTED_HINTS = {
    "num_beams": "samgpu decodes greedily or by sampling; beam search is not supported",
    "num_return_sequences": "repeat the prompt in the batch instead",
    "return_dict_in_generate": "read per-request statistics from decoder.last_stats instead",
    "inputs_embeds": "pass token ids",
}


def is_neutral(name: str, value: Any) -> bool:
    """An UNSUPPORTED argument's value that changes nothing (None included)."""
    return value is None or any(
        value is n or value == n for n in UNSUPPORTED[name] if n is not None
    )


@dataclass(frozen=True)
class GenerationRequest:
    max_new_tokens: int
    temperature: float  # 0 = greedy
    top_k: int
    top_p: float
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    stop: tuple[str, ...]
    seed: int | None


def is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_flag(x: Any) -> bool:
    return isinstance(x, (bool, numbers.Integral)) and x in (0, 1)


# Generation arguments checked by type before use (a string or None otherwise failed deep in torch
# or in a comparison, and a float seed or count was truncated silently): name -> (accepts, what
# it must be).
ARG_TYPES: dict[str, tuple[Any, str]] = {
    "max_new_tokens": (is_int, "an int"),
    "max_length": (is_int, "an int"),
    "top_k": (is_int, "an int (0 = off)"),
    "pad_token_id": (is_int, "an int"),
    "seed": (lambda x: x is None or is_int(x), "an int or None"),
    "temperature": (is_real, "a number"),
    "top_p": (is_real, "a number"),
    "do_sample": (is_flag, "a bool"),
}


def check_types(values: dict[str, Any], *, none_is_unset: bool) -> None:
    """TypeError naming the first argument of `values` of the wrong type (ARG_TYPES); with
    none_is_unset, None means "not given" and passes."""
    for name, value in values.items():
        accepts, kind = ARG_TYPES[name]
        if not (value is None and none_is_unset) and not accepts(value):
            raise TypeError(f"{name} must be {kind}, got {value!r:.60} ({type(value).__name__})")


def check_count(name: str, value: Any) -> None:
    """max_new_tokens / batch_size: a positive int (not a float, a bool or a string)."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")


def as_id_tuple(x: Any, name: str = "eos_token_id") -> tuple[int, ...]:
    """None, an int, or a list / tensor of ints (transformers accepts each) -> a tuple."""
    if x is None:
        return ()
    if isinstance(x, torch.Tensor):
        x = x.flatten().tolist()
    if is_int(x):
        return (int(x),)
    ids = None if isinstance(x, (str, bytes, dict)) or not isinstance(x, Iterable) else list(x)
    if ids is None or not all(is_int(v) for v in ids):
        raise TypeError(f"{name} must be an int or a list of ints, got {x!r:.60}")
    return tuple(int(v) for v in ids)


def resolve_request(
    model, kwargs: dict[str, Any], prompt_lens: list[int], input_width: int | None = None
) -> GenerationRequest:
    """HF precedence: call kwargs > generation_config (call's, else model's) > global defaults."""
    gen_cfg = kwargs.pop("generation_config", None) or getattr(model, "generation_config", None)
    cfg_values = config_values(gen_cfg)

    def get(name: str, default: Any = None) -> Any:
        if kwargs.get(name) is not None:
            return kwargs[name]
        if name in cfg_values:
            return cfg_values[name]
        return HF_DEFAULTS.get(name, default)

    for name, neutral in UNSUPPORTED.items():
        from_call = name in kwargs and kwargs[name] is not None
        value = kwargs[name] if from_call else cfg_values.get(name)
        if is_neutral(name, value):
            continue
        hint = UNSUPPORTED_HINTS.get(name, "samgpu cannot apply it without changing the result")
        where = "" if from_call else " (set in model.generation_config)"
        fix = "" if from_call else f"; pass {name}={neutral[-1]!r} to generate without it"
        raise ValueError(f"{name}={value!r}{where} is not supported: {hint}{fix}")

    # transformers: max_new_tokens wins; an explicit max_length counts the (padded) input; the
    # global default max_length (20) means 20 new tokens, capped by the model's context.
    input_len = input_width or max(prompt_lens)
    if kwargs.get("max_new_tokens") is not None:
        max_new = int(kwargs["max_new_tokens"])
    elif kwargs.get("max_length") is not None:
        max_new = int(kwargs["max_length"]) - input_len
    elif cfg_values.get("max_new_tokens") is not None:
        max_new = int(cfg_values["max_new_tokens"])
    elif (
        cfg_values.get("max_length") is not None
        and cfg_values["max_length"] != HF_DEFAULTS["max_length"]
    ):
        max_new = int(cfg_values["max_length"]) - input_len
    else:
        max_new = HF_DEFAULTS["max_length"]
        ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if ctx is not None:
            max_new = min(max_new, int(ctx) - input_len)
    if max_new < 1:
        raise ValueError(
            f"nothing to generate: max_new_tokens={max_new} (max_length must exceed the longest"
            f" prompt, {max(prompt_lens)} tokens)"
        )

    do_sample = bool(get("do_sample"))
    temperature, top_k, top_p = 0.0, 0, 1.0
    if do_sample:
        temperature = float(get("temperature"))
        top_k = int(get("top_k") or 0)
        top_p = float(get("top_p"))
        if not temperature > 0:
            raise ValueError(
                f"temperature={temperature} with do_sample=True: use a positive temperature,"
                " or do_sample=False for greedy decoding"
            )
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 disables it)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")

    eos = as_id_tuple(get("eos_token_id"))
    pad = get("pad_token_id")
    if pad is None:
        pad = eos[0] if eos else 0
    stop = kwargs.get("stop_strings") or kwargs.get("stop") or cfg_values.get("stop_strings")
    stop = stop_tuple(stop, "stop strings")
    seed = kwargs.get("seed")
    return GenerationRequest(max_new, temperature, top_k, top_p, eos, int(pad), stop, seed)


def config_values(gen_cfg: Any) -> dict[str, Any]:
    """The settings a GenerationConfig (or None) sets: transformers 5 leaves the others None."""
    if gen_cfg is None:
        return {}
    source = gen_cfg.to_dict() if hasattr(gen_cfg, "to_dict") else dict(vars(gen_cfg))
    return {k: v for k, v in source.items() if v is not None}


def check_kwargs(kwargs: dict[str, Any]) -> None:
    """Unknown names raise TypeError, and so do known ones of the wrong type (ARG_TYPES)."""
    known = (
        set(UNSUPPORTED)
        | NO_EFFECT
        | {
            "generation_config",
            "max_new_tokens",
            "max_length",
            "do_sample",
            "temperature",
            "top_k",
            "top_p",
            "eos_token_id",
            "pad_token_id",
            "stop",
            "stop_strings",
            "tokenizer",
            "seed",
        }
    )
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"SamDecoder.generate() got unexpected keyword argument(s) {', '.join(unknown)}"
        )
    check_types({name: kwargs.get(name) for name in ARG_TYPES}, none_is_unset=True)


# Stop strings


def stop_tuple(stop: Any, name: str = "stop") -> tuple[str, ...]:
    """None, a stop string or a list / tuple of them -> a tuple of non-empty strings; else a
    TypeError (naming `name`) or ValueError."""
    if isinstance(stop, str):
        stop = (stop,)
    if stop is not None and not isinstance(stop, (list, tuple)):
        raise TypeError(f"{name} must be a string or a list of strings, got {stop!r:.60}")
    stop = tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError(f"stop strings must be non-empty strings, got {stop!r}")
    return stop


def first_stop(text: str, stop: Sequence[str]) -> int:
    """Position of the earliest stop string in `text`, or -1."""
    hits = [p for p in (text.find(s) for s in stop) if p >= 0]
    return min(hits) if hits else -1


def cut_tokens_at_stop(
    tokens: list[int], tokenizer, stop: Sequence[str], stop_ids: Collection[int] = ()
) -> tuple[list[int], bool]:
    """Shortest prefix of `tokens` that ends in one of `stop_ids` (the stop strings that are one
    token: single_token_stops) or whose text contains a stop string (stop kept, as transformers'
    stop_strings does); (tokens, False) when neither occurs. The text is decoded without special
    tokens, as a completion's is, so a stop string never matches inside the EOS token's text
    ("im_end" in "<|im_end|>"). Binary search over prefixes: containment only grows with the
    prefix."""
    if not stop:
        return tokens, False
    end = next((i + 1 for i, t in enumerate(tokens) if t in stop_ids), None)
    head = tokens if end is None else tokens[:end]

    def has_stop(ids: list[int]) -> bool:
        return first_stop(tokenizer.decode(ids, skip_special_tokens=True), stop) >= 0

    if not has_stop(head):
        return head, end is not None
    lo, hi = 1, len(head)
    while lo < hi:
        mid = (lo + hi) // 2
        if has_stop(head[:mid]):
            hi = mid
        else:
            lo = mid + 1
    return head[:lo], True


def prompts_from_tensor(model, ids: torch.Tensor, mask: torch.Tensor | None, kwargs) -> tuple:
    """input_ids [B, T] (+ attention_mask, or one inferred from pad_token_id as transformers
    does) -> (prompts as token lists without padding, the [B, T] ids)."""
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"input_ids must be an integer tensor [B, T], got {tuple(ids.shape)} {ids.dtype}"
        )
    if mask is not None and mask.dim() == 1:
        mask = mask[None]
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"attention_mask {tuple(mask.shape)} and input_ids {tuple(ids.shape)} disagree"
        )
    ids_cpu = ids.detach().to("cpu", torch.int64)  # API boundary: one copy to the host
    if mask is None:
        # transformers infers the mask from pad_token_id when that is not also an EOS id
        # (SmolLM2 pads with its EOS, which chat prompts contain: no inference there)
        gen_cfg = kwargs.get("generation_config") or getattr(model, "generation_config", None)

        def setting(name: str):
            value = kwargs.get(name)
            return value if value is not None else getattr(gen_cfg, name, None)

        pad = setting("pad_token_id")
        eos = set(as_id_tuple(setting("eos_token_id")))
        if pad is not None and int(pad) not in eos and bool((ids_cpu == int(pad)).any()):
            mask_cpu = ids_cpu != int(pad)
        else:
            mask_cpu = torch.ones_like(ids_cpu, dtype=torch.bool)
    else:
        mask_cpu = mask.detach().to("cpu").bool()
    prompts = [row[m].tolist() for row, m in zip(ids_cpu, mask_cpu, strict=True)]
    for b, p in enumerate(prompts):
        if not p:
            raise ValueError(f"row {b} of input_ids has no tokens under attention_mask")
    return prompts, ids


def single_token_stops(stop: Sequence[str], tokenizer) -> tuple[int, ...]:
    """Stop strings that are exactly one token end generation on the GPU, like an EOS."""
    ids = []
    for s in stop:
        enc = tokenizer(s, add_special_tokens=False).input_ids
        if len(enc) == 1 and tokenizer.decode(enc) == s:
            ids.append(int(enc[0]))
    return tuple(ids)


def pack_like_hf(rows: torch.Tensor, tokens: list[list[int]], pad: int) -> torch.Tensor:
    """[B, T] input rows + generated tokens -> [B, T + max_new], right-padded with `pad`."""
    width = max((len(t) for t in tokens), default=0)
    new = torch.full((rows.shape[0], width), pad, dtype=torch.long)
    for b, t in enumerate(tokens):
        if t:
            new[b, : len(t)] = torch.tensor(t, dtype=torch.long)
    return torch.cat([rows.to(torch.long), new.to(rows.device)], dim=1)


class StreamerAdapter:
    """on_progress -> transformers streamer.put(new tokens) (batch size 1)."""

    def __init__(self, streamer):
        self.streamer = streamer
        self.sent = 0

    def __call__(self, info: Any) -> None:
        toks = info.tokens[0] if info.request_ids[:1] == [0] else None
        if toks is not None and len(toks) > self.sent:
            self.streamer.put(torch.tensor(toks[self.sent :]))
            self.sent = len(toks)

    def flush(self, final: list[int]) -> None:
        if len(final) > self.sent:
            self.streamer.put(torch.tensor(final[self.sent :]))
            self.sent = len(final)
