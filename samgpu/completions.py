"""Text-level helpers shared by the Python API and the CLI: chat prompts, the ids that end a
response, and finished token ids -> `Completion` (text cut before a stop string, finish reason).

finish_reason: "eos" (the model ended its answer: an EOS id), "stop" (a stop string or stop token
the caller gave), "length" (max_new_tokens reached). OpenAI and vLLM report both of the first two as
"stop"; samgpu keeps them apart because the difference is information (did the model finish, or
did the caller cut it?), and `finish_reason != "length"` is the portable "not truncated" check.

Example: tokens [9906, 11, 2] with eos (2,) and no stop strings -> Completion(text="Hello,",
tokens=[9906, 11, 2], finish_reason="eos").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from samgpu.decoding.config import MAX_EOS, ProgressInfo
from samgpu.hf_args import as_id_tuple, cut_tokens_at_stop, first_stop, single_token_stops

# What a tokenizer's decode puts for bytes that are not whole UTF-8 characters: at the end of a
# response cut by max_new_tokens, a character whose remaining bytes were never generated.
REPLACEMENT_CHAR = "\ufffd"


@dataclass
class Completion:
    """One request's result from `samgpu.generate`. `str(c)` is the text."""

    text: str  # completion, prompt excluded, cut before a stop string (or a half character)
    tokens: list[int]  # generated token ids (EOS included when produced, cut after a stop string)
    finish_reason: str  # "eos", "stop" (stop string), or "length" (max_new_tokens)
    stats: dict[str, Any]  # steps, generated, mat, tokens_per_s, sources, ...

    def __str__(self) -> str:
        return self.text


def stats_dict(s: Any) -> dict[str, Any]:
    """RequestStats (or a dict) -> a plain dict."""
    if s is None:
        return {}
    if dataclasses.is_dataclass(s):
        return dataclasses.asdict(s)
    if isinstance(s, dict):
        return dict(s)
    return {k: v for k, v in vars(s).items() if not k.startswith("_")}


def eos_with_stops(eos: Sequence[int], stop_ids: Sequence[int]) -> tuple[int, ...]:
    """EOS ids plus single-token stop ids, within the loop's fixed EOS buffer (MAX_EOS). Stop ids
    that do not fit are still honoured after generation (cut_tokens_at_stop); too many EOS ids are
    an error rather than silently dropped."""
    eos = tuple(dict.fromkeys(int(t) for t in eos))
    if len(eos) > MAX_EOS:
        raise ValueError(f"at most {MAX_EOS} eos_token_id values are supported, got {len(eos)}")
    extra = [int(t) for t in dict.fromkeys(stop_ids) if int(t) not in eos]
    return eos + tuple(extra[: MAX_EOS - len(eos)])


class StopWatch:
    """The scheduler's `stop_when` for stop strings: True once a request's text (special tokens
    skipped, as its completion's) holds one, so that decoding ends at that host check instead of
    at EOS or the length limit. Each look decodes the tokens new since the last look plus a margin
    of tokens that a stop string straddling the boundary could span: its UTF-8 bytes (a byte-level
    token carries at least one byte; a character of 2-4 bytes may take a token each, so counting
    characters missed "𓀀𓀁𓀂𓀃", 16 tokens) plus 8 for special tokens, which carry no text."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, tuple(stop)
        self.margin = max(len(s.encode("utf-8")) for s in self.stop) + 8
        self.seen: dict[int, int] = {}  # request -> tokens looked at

    def __call__(self, request: int, tokens: list[int]) -> bool:
        start = max(0, self.seen.get(request, 0) - self.margin)
        self.seen[request] = len(tokens)
        return (
            first_stop(self.tokenizer.decode(tokens[start:], skip_special_tokens=True), self.stop)
            >= 0
        )


def stop_watch(tokenizer, stop: Sequence[str]) -> StopWatch | None:
    """A StopWatch for a call's stop strings; None without any."""
    return StopWatch(tokenizer, stop) if stop else None


def encode_chat(tokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """Chat messages -> prompt ids with the generation prompt (assistant turn opened)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "this tokenizer has no chat template: pass plain prompts (raw=True / --raw) instead"
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def progress_tokens(info: ProgressInfo, request: int = 0) -> list[int] | None:
    """Tokens generated so far by prompt `request`, from a ProgressInfo; None once it is no longer
    live (finished requests come back in the output)."""
    if request not in info.request_ids:
        return None
    return list(info.tokens[info.request_ids.index(request)])


def eos_ids(model, tokenizer) -> tuple[int, ...]:
    """The ids that end a response: model.generation_config.eos_token_id, else the tokenizer's."""
    ids = as_id_tuple(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    if not ids and getattr(tokenizer, "eos_token_id", None) is not None:
        ids = (int(tokenizer.eos_token_id),)
    return ids


def make_completion(
    tokens: list[int],
    stats: dict[str, Any],
    tokenizer,
    eos: Sequence[int],
    stop: Sequence[str],
    stop_ids: Sequence[int] | None = None,
) -> Completion:
    """Generated ids -> Completion (text without special tokens, cut before a stop string).
    stop_ids: single_token_stops(stop, tokenizer) when the caller has them already. A response
    cut by the length limit in the middle of a multi-byte character ends in one incomplete
    REPLACEMENT_CHAR, which the text drops (the tokens keep its bytes); one the model generated
    earlier in the text stays."""
    reason = "eos" if tokens and tokens[-1] in eos else "length"
    if stop:
        if stop_ids is None:
            stop_ids = single_token_stops(stop, tokenizer)
        # a stop string that is the EOS token ends the response as the model's EOS does: "eos"
        tokens, hit = cut_tokens_at_stop(
            tokens, tokenizer, stop, {t for t in stop_ids if t not in eos}
        )
        reason = "stop" if hit else reason
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if stop and (p := first_stop(text, stop)) >= 0:
        text = text[:p]
    elif reason == "length" and text.endswith(REPLACEMENT_CHAR):
        text = text[: -len(REPLACEMENT_CHAR)]
    return Completion(text=text, tokens=tokens, finish_reason=reason, stats=dict(stats))
