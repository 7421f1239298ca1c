"""Python API: `SamDecoder` (a drop-in for a transformers model's `generate`) and `samgpu.generate`
(a one-liner on the embedded default model).

`SamDecoder(model, tokenizer, method="sam+tr", index=None)` wraps any transformers causal LM:
`samgpu.decoding.runners.make_runner` picks the fast Llama-family runner where the architecture
allows and the generic transformers runner otherwise. `SamDecoder.generate` takes the arguments of
`model.generate` that make sense for lossless speculative decoding and returns what it returns:

    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=64)      # before
    out = SamDecoder(model, tok).generate(input_ids, attention_mask=mask, max_new_tokens=64)

Both give a LongTensor [B, T + new]: each input row unchanged (left padding kept) followed by its
generated tokens, EOS included, padded on the right with `pad_token_id` after a row finishes. Greedy
outputs are identical token for token (fp32); sampling follows the same distribution. Defaults are
resolved as transformers does (the call's arguments, then `model.generation_config`, then
transformers' global defaults: 20 new tokens, top_k 50 when sampling). Arguments that would change
the result and that samgpu cannot honour (beam search, repetition penalty, logits processors, ...)
raise ValueError; unknown names raise TypeError. Nothing is silently ignored.

Other inputs: a list of strings (tokenized as they are) or a list of chat conversations (lists of
{"role", "content"}; the chat template is applied) returns a list of completion strings, prompt
excluded, cut before the first stop string (the OpenAI/vLLM convention; tensor outputs keep the stop
string, as transformers does).

Statistics of the last call, one entry per request (steps, accepted tokens per step, tokens/s, draft
sources used), are in `decoder.last_stats`; `samgpu.generate` returns them on each `Completion`.

Capacity: the KV cache, automata and CUDA graphs are sized for (batch, length) on first use and
regrown when a call needs more (length in multiples of 128); calls that fit reuse them. Decoders
are built by `samgpu.factory.build_decoder`, the one factory the CLI and the benchmarks use too:
the draft tree budget follows the batch size, and on a CPU model it is the small one of a large
batch, since there verifying N nodes costs about N decoding steps.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from samgpu.decoding.config import (
    MAX_EOS,
    SPECULATION_MODES,
    GenerationConfig,
    GenerationOutput,
    ProgressInfo,
)
from samgpu.decoding.stages import StageRange, nvtx_range
from samgpu.drafters import method_names
from samgpu.factory import DEFAULT_METHOD, build_decoder, draft_nodes
from samgpu.hf_args import (
    StreamerAdapter,
    as_id_tuple,
    check_kwargs,
    cut_tokens_at_stop,
    first_stop,
    pack_like_hf,
    prompts_from_tensor,
    resolve_request,
    single_token_stops,
)
from samgpu.resolve import (  # re-exported: samgpu.api is where users and the CLI find them
    SetupError,
    is_oom,
    load_model,
    out_of_memory_message,
    resolve_device,
    resolve_dtype,
    resolve_index,
)

__all__ = ["Completion", "SamDecoder", "SetupError", "generate", "resolve_device", "resolve_dtype"]

# Sequence capacity is rounded up to a multiple of this (reuse across calls of similar length;
# the CPU attention path costs time in proportion to the capacity, so no power-of-two growth).
LEN_QUANTUM = 128


@dataclass
class Completion:
    """One request's result from `samgpu.generate`. `str(c)` is the text."""

    text: str  # completion, prompt excluded, cut before a stop string
    tokens: list[int]  # generated token ids (EOS included when produced, cut after a stop string)
    finish_reason: str  # "eos", "stop" (stop string), or "length" (max_new_tokens)
    stats: dict[str, Any]  # steps, generated, mat, tokens_per_s, sources, ...

    def __str__(self) -> str:
        return self.text


# ----------------------------------------------------------------------------- the decoder


def _stats_dict(s: Any) -> dict[str, Any]:
    if s is None:
        return {}
    if dataclasses.is_dataclass(s):
        return dataclasses.asdict(s)
    if isinstance(s, dict):
        return dict(s)
    return {k: v for k, v in vars(s).items() if not k.startswith("_")}


class SamDecoder:
    """Lossless speculative decoding for a transformers causal LM; see the module docstring.

    model: a transformers causal LM (eval mode, on its device). tokenizer: needed for string and
    chat inputs and stop strings. method: one of samgpu.drafters.method_names() ("ar" = no
    drafting).
    index: a static SamIndex, a path to one, "default" (the embedded corpus's index for this
    tokenizer, built and cached on first use) or None. options: the method's options (its
    options dataclass's fields, e.g. l_threshold=5).
    Decode-loop options: `use_cuda_graphs` (default True); `check_every`; `continuous_batching`
    (finished requests' slots take the next prompts when more prompts than `batch_size` are
    given); `speculation` ("adaptive", the default: plain AR steps while drafting does not pay;
    "always"); `exact` (the batch- and tree-invariant forward: bfloat16 outputs equal `ar`'s and
    do not depend on the batch; Llama-family models only); `stage_range` (name -> context
    manager around each stage of a step; default: NVTX ranges on CUDA).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        method: str = DEFAULT_METHOD,
        index: Any = None,
        *,
        use_cuda_graphs: bool = True,
        check_every: int | None = None,
        continuous_batching: bool = False,
        stage_range: StageRange = nvtx_range,
        exact: bool = False,
        speculation: str = "adaptive",
        **options: Any,
    ):
        if method not in method_names():
            raise ValueError(
                f"unknown method {method!r}: choose one of {', '.join(method_names())}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.method = method
        self.index = resolve_index(index, tokenizer, method)
        self.options = dict(options)
        self.use_cuda_graphs = use_cuda_graphs
        self.check_every = check_every
        self.continuous_batching = bool(continuous_batching)
        self.stage_range = stage_range
        self.exact = bool(exact)
        if speculation not in SPECULATION_MODES:
            raise ValueError(
                f"speculation={speculation!r}: expected one of {', '.join(SPECULATION_MODES)}"
            )
        self.speculation = speculation
        self.last_stats: list[dict[str, Any]] = []
        self._runner = None
        self._decoder = None
        self._capacity = (0, 0)  # (max_reqs, max_len) of the current decoder
        self._lock = threading.Lock()
        self._validate_options()

    # -- set-up

    def _validate_options(self) -> None:
        """Unknown or invalid options fail at construction, not at the first generate. At one
        sequence the tree budget is the largest: an upper bound for every batch size."""
        self._max_nodes = draft_nodes(self.method, 1, self.device, self.options)

    def needed_len(self, longest_prompt: int, max_new_tokens: int) -> int:
        """Per-sequence capacity for prompts up to `longest_prompt` tokens (Engine contract:
        prompt + max_new_tokens + draft nodes)."""
        return longest_prompt + max_new_tokens + self._max_nodes + 1

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def runner(self):
        if self._runner is None:
            from samgpu.decoding.runners import make_runner

            self._runner = make_runner(self.model, exact=self.exact)
        return self._runner

    def context_length(self) -> int | None:
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "max_position_embeddings", None)

    def ensure_capacity(self, num_reqs: int, max_len: int):
        """The decoder (a Scheduler) for num_reqs slots of max_len tokens, built now if needed (so
        out-of-memory shows at set-up) and warmed up on a GPU (kernels compiled, step graphs of
        the full width captured, so compilation stays out of the generation's time). Capacity
        only grows (the length in multiples of LEN_QUANTUM); more prompts than slots run through
        the slots in turn."""
        cap_reqs, cap_len = self._capacity
        if self._decoder is not None and num_reqs <= cap_reqs and max_len <= cap_len:
            return self._decoder
        new_reqs = max(cap_reqs, num_reqs)
        new_len = max(cap_len, -(-max_len // LEN_QUANTUM) * LEN_QUANTUM)
        self._decoder = None  # free the old buffers before allocating the new ones
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            self._decoder = build_decoder(
                self.runner,
                self.method,
                batch_size=new_reqs,
                max_len=new_len,
                index=self.index,
                options=self.options,
                use_cuda_graphs=self.use_cuda_graphs,
                stage_range=self.stage_range,
            )
            if self.device.type == "cuda":
                self._decoder.engine.warm_up(new_reqs)
        except Exception as e:
            if is_oom(e):
                raise SetupError(
                    out_of_memory_message(
                        e, batch_size=num_reqs, max_len=new_len, what="allocating the KV cache"
                    )
                ) from None
            raise
        self._capacity = (new_reqs, new_len)
        return self._decoder

    # -- token-level entry point (CLI, benchmarks)

    def generate_ids(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_ids: Sequence[int] = (),
        seed: int | None = None,
        on_progress: Callable[[Any], None] | None = None,
        on_finish: Callable[[int, list[int], Any], None] | None = None,
        batch_size: int | None = None,
    ):
        """Token ids in, samgpu.decoding.config.GenerationOutput out (tokens and stats per
        prompt). on_progress(ProgressInfo) runs at every host check; on_finish(prompt index,
        tokens, RequestStats) as each request finishes."""
        if not prompts:
            return _empty_output()
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        vocab = getattr(self.runner, "vocab_size", None)
        longest = max(len(p) for p in prompts)
        ctx = self.context_length()
        if ctx is not None and longest + max_new_tokens > ctx:
            raise ValueError(
                f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's"
                f" context of {ctx} tokens (config.max_position_embeddings): shorten the prompt or"
                " lower max_new_tokens"
            )
        if vocab is not None:
            for i, p in enumerate(prompts):
                if min(p) < 0 or max(p) >= vocab:
                    raise ValueError(f"prompt {i} has token ids outside [0, {vocab})")
        num_reqs = min(len(prompts), batch_size or len(prompts))
        decoder = self.ensure_capacity(num_reqs, self.needed_len(longest, max_new_tokens))
        cfg_kw: dict[str, Any] = dict(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
            eos_token_ids=tuple(int(t) for t in eos_token_ids),
            seed=seed,
            continuous=self.continuous_batching,
            speculation=self.speculation,
        )
        if self.check_every is not None:
            cfg_kw["check_every"] = int(self.check_every)
        config = GenerationConfig(**cfg_kw)
        with self._lock:
            out = decoder.generate(
                [list(map(int, p)) for p in prompts], config, on_progress, on_finish
            )
        self.last_stats = [_stats_dict(s) for s in out.stats]
        return out

    # -- transformers-compatible entry point

    def generate(
        self,
        inputs: torch.Tensor | Sequence[str] | Sequence[Sequence[dict]] | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        streamer: Any = None,
        **kwargs: Any,
    ):
        """Like `model.generate`; see the module docstring for inputs, outputs and arguments."""
        if inputs is None:
            inputs = input_ids
        elif input_ids is not None:
            raise TypeError("pass the prompt once: either positionally or as input_ids=")
        if inputs is None:
            raise TypeError("generate() needs input_ids (a LongTensor) or a list of prompts")
        check_kwargs(kwargs)
        tokenizer = kwargs.pop("tokenizer", None) or self.tokenizer

        if isinstance(inputs, torch.Tensor):
            prompts, rows = prompts_from_tensor(self.model, inputs, attention_mask, kwargs)
            as_text = False
        elif isinstance(inputs, (list, tuple)):
            if attention_mask is not None:
                raise ValueError("attention_mask applies to tensor inputs only")
            if tokenizer is None:
                raise ValueError("string or chat inputs need a tokenizer: SamDecoder(model, tok)")
            prompts = [self._encode(p, tokenizer) for p in inputs]
            rows, as_text = None, True
        else:
            raise TypeError(
                "inputs must be a LongTensor [B, T], a list of strings or a list of chat"
                f" conversations, got {type(inputs).__name__}"
            )
        if not prompts:
            return [] if as_text else inputs
        width = rows.shape[1] if rows is not None else None
        req = resolve_request(self.model, kwargs, [len(p) for p in prompts], width)
        if req.stop and tokenizer is None:
            raise ValueError("stop strings need a tokenizer: SamDecoder(model, tok)")
        eos = eos_with_stops(req.eos_token_ids, single_token_stops(req.stop, tokenizer))

        on_progress = None
        if streamer is not None:
            if len(prompts) != 1:
                raise ValueError("streamer supports batch size 1 only, as in transformers")
            streamer.put(torch.tensor([prompts[0]]))
            on_progress = StreamerAdapter(streamer)
        out = self.generate_ids(
            prompts,
            max_new_tokens=req.max_new_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            eos_token_ids=eos,
            seed=req.seed,
            on_progress=on_progress,
        )
        tokens = [list(t) for t in out.tokens]
        if req.stop:
            tokens = [cut_tokens_at_stop(t, tokenizer, req.stop)[0] for t in tokens]
        if streamer is not None:
            on_progress.flush(tokens[0])
            streamer.end()
        if as_text:
            texts = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
            if req.stop:
                texts = [t[:p] if (p := first_stop(t, req.stop)) >= 0 else t for t in texts]
            return texts
        return pack_like_hf(rows, tokens, req.pad_token_id)

    def _encode(self, prompt: Any, tokenizer) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("empty prompt: every prompt needs at least one token")
            return list(tokenizer(prompt).input_ids)
        if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
            return encode_chat(tokenizer, list(prompt))
        raise TypeError(
            f"each prompt must be a string or a list of chat messages, got {type(prompt).__name__}"
        )


def eos_with_stops(eos: Sequence[int], stop_ids: Sequence[int]) -> tuple[int, ...]:
    """EOS ids plus single-token stop ids, within the loop's fixed EOS buffer (MAX_EOS). Stop ids
    that do not fit are still honoured after generation (cut_tokens_at_stop); too many EOS ids are
    an error rather than silently dropped."""
    eos = tuple(dict.fromkeys(int(t) for t in eos))
    if len(eos) > MAX_EOS:
        raise ValueError(f"at most {MAX_EOS} eos_token_id values are supported, got {len(eos)}")
    extra = [int(t) for t in dict.fromkeys(stop_ids) if int(t) not in eos]
    return eos + tuple(extra[: MAX_EOS - len(eos)])


def encode_chat(tokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """Chat messages -> prompt ids with the generation prompt (assistant turn opened)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "this tokenizer has no chat template: pass plain prompts (raw=True / --raw) instead"
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _empty_output() -> GenerationOutput:
    return GenerationOutput(tokens=[], stats=[])


def progress_tokens(info: ProgressInfo, request: int = 0) -> list[int] | None:
    """Tokens generated so far by prompt `request`, from a ProgressInfo; None once it is no longer
    live (finished requests come back in the output)."""
    if request not in info.request_ids:
        return None
    return list(info.tokens[info.request_ids.index(request)])


# ----------------------------------------------------------------------------- one-liner


@functools.lru_cache(maxsize=2)
def _cached_decoder(model: str, method: str, index: Any, device: str, dtype: str, opts: tuple):
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    m, tok = load_model(model, dev, dt)
    return SamDecoder(m, tok, method, index, **dict(opts))


def generate(
    prompts: str | Sequence[str] | Sequence[Sequence[dict]],
    model: Any = "default",
    *,
    method: str = DEFAULT_METHOD,
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
) -> Completion | list[Completion]:
    """Generate completions with samgpu in one call.

    prompts: a string, a list of strings, or a list of chat conversations. Plain strings get the
    model's chat template (as a single user turn) unless raw=True. model: "default" (the embedded
    SmolLM2-135M-Instruct), a local transformers checkpoint path, or a loaded model (then pass
    tokenizer=). index: "default" (the embedded corpus's index for the model's tokenizer, built and
    cached on first use), None, a path or a SamIndex. temperature 0 is greedy. Returns a Completion
    (for a string) or a list of them; `Completion.stats` has the per-request statistics.

    >>> samgpu.generate("Name three primes.", max_new_tokens=32).text  # doctest: +SKIP
    """
    single = isinstance(prompts, str)
    items = [prompts] if single else list(prompts)
    if isinstance(model, str):
        key_index = str(index) if isinstance(index, os.PathLike) else index
        dec = _cached_decoder(
            model, method, key_index, str(device), str(dtype), tuple(sorted(options.items()))
        )
    else:
        if tokenizer is None:
            raise ValueError("a loaded model needs tokenizer= as well")
        dec = SamDecoder(model, tokenizer, method, index, **options)
    tok = dec.tokenizer
    encoded = []
    for i, p in enumerate(items):
        if isinstance(p, str):
            if not p.strip():
                raise ValueError(f"prompt {i} is empty")
            if raw:
                encoded.append(list(tok(p).input_ids))
            else:
                encoded.append(encode_chat(tok, [{"role": "user", "content": p}]))
        else:
            encoded.append(encode_chat(tok, list(p)))
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    eos = eos_ids(dec.model, tok)
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    out = dec.generate_ids(
        encoded,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_ids=eos_with_stops(eos, single_token_stops(stops, tok)),
        seed=seed,
        batch_size=batch_size,
    )
    results = [
        make_completion(list(t), s, tok, eos, stops)
        for t, s in zip(out.tokens, dec.last_stats or [{}] * len(out.tokens), strict=True)
    ]
    return results[0] if single else results


def eos_ids(model, tokenizer) -> tuple[int, ...]:
    """The ids that end a response: model.generation_config.eos_token_id, else the tokenizer's."""
    ids = as_id_tuple(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    if not ids and getattr(tokenizer, "eos_token_id", None) is not None:
        ids = (int(tokenizer.eos_token_id),)
    return ids


def make_completion(
    tokens: list[int], stats: dict[str, Any], tokenizer, eos: Sequence[int], stop: Sequence[str]
) -> Completion:
    """Generated ids -> Completion (text without special tokens, cut before a stop string)."""
    reason = "eos" if tokens and tokens[-1] in eos else "length"
    if stop:
        tokens, hit = cut_tokens_at_stop(tokens, tokenizer, stop)
        reason = "stop" if hit else reason
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if stop and (p := first_stop(text, stop)) >= 0:
        text = text[:p]
    return Completion(text=text, tokens=tokens, finish_reason=reason, stats=dict(stats))
