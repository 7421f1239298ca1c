"""Python API: `SamDecoder` (a drop-in for a transformers model's `generate`); `samgpu.generate`
(a one-liner on the embedded default model) is built on it in samgpu/oneshot.py.

`SamDecoder(model, tokenizer, method=None, index=None)` wraps any transformers causal LM (the fast
Llama-family runner where the architecture allows, else the generic one); method is one of
samgpu.drafters.method_names(), e.g. "sam+tr", or None for `default_method` on the model's device.
`generate` takes the arguments of `model.generate` that make sense for lossless speculative
decoding:

    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=64)      # before
    out = SamDecoder(model, tok).generate(input_ids, attention_mask=mask, max_new_tokens=64)

Both give a LongTensor [B, T + new]: each input row unchanged (left padding kept) followed by its
generated tokens, EOS included, padded on the right with `pad_token_id` after a row finishes. Greedy
outputs are identical token for token (fp32); sampling follows the same distribution. Defaults are
resolved as transformers does (call, `model.generation_config`, transformers' defaults). Arguments
that would change the result and that samgpu cannot honour (beam search, repetition penalty, ...)
raise ValueError; unknown names, and values of the wrong type, raise TypeError. Nothing is
silently ignored.

Other inputs: a list of strings (tokenized as they are) or of chat conversations (the template is
applied) returns completion strings, cut before the first stop string (tensor outputs keep it, as
transformers does). Per-request statistics of the last call are in `decoder.last_stats`.

Capacity: buffers and CUDA graphs are sized for (batch, length) on first use and regrown when a
call needs more (length in multiples of 128), by `samgpu.factory.build_decoder`, the one factory
the CLI and the benchmarks use too (budgets follow the batch size; see the factory).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from samgpu.completions import (  # re-exported: the API's text-level helpers
    Completion,
    encode_chat,
    eos_ids,
    eos_with_stops,
    make_completion,
    progress_tokens,
    stats_dict,
    stop_watch,
)
from samgpu.decoding.config import SPECULATION_MODES, GenerationConfig, GenerationOutput
from samgpu.decoding.stages import StageRange, nvtx_range
from samgpu.drafters import method_names
from samgpu.drafters.parts.store import save_store, store_of
from samgpu.factory import build_decoder, draft_nodes
from samgpu.hf_args import (
    StreamerAdapter,
    as_id_tuple,
    check_count,
    check_kwargs,
    check_types,
    cut_tokens_at_stop,
    first_stop,
    is_int,
    pack_like_hf,
    prompts_from_tensor,
    resolve_request,
    single_token_stops,
)
from samgpu.resolve import (  # re-exported: samgpu.api is where users and the CLI find them
    SetupError,
    default_method,
    is_oom,
    load_model,
    out_of_memory_message,
    resolve_device,
    resolve_dtype,
    resolve_index,
)

__all__ = [
    "Completion",
    "SamDecoder",
    "SetupError",
    "encode_chat",
    "eos_ids",
    "eos_with_stops",
    "first_stop",
    "load_model",
    "make_completion",
    "out_of_memory_message",
    "progress_tokens",
    "stop_watch",
    "resolve_device",
    "resolve_dtype",
    "resolve_index",
    "default_method",
]

# Sequence capacity is rounded up to a multiple of this (reuse across calls of similar length;
# the CPU attention path costs time in proportion to the capacity, so no power-of-two growth).
LEN_QUANTUM = 128


# ----------------------------------------------------------------------------- the decoder


class SamDecoder:
    """Lossless speculative decoding for a transformers causal LM; see the module docstring.

    model: a transformers causal LM (eval mode, on its device). tokenizer: needed for string and
    chat inputs and stop strings. method: one of samgpu.drafters.method_names() ("ar" = no
    drafting); None: default_method(the model's device), "merged" on CUDA, "ar" on a CPU ("merged"
    with a store).
    index: a static SamIndex, a path to one, "default" (the embedded corpus's index for this
    tokenizer, built and cached on first use) or None. options: the method's options (its
    options dataclass's fields, e.g. l_threshold=5).
    Decode-loop options: `use_cuda_graphs` (default True); `check_every`; `continuous_batching`
    (finished requests' slots take the next prompts when more prompts than `batch_size` are
    given); `speculation` ("adaptive", the default: plain AR steps while drafting does not pay,
    except one sequence on a GPU, which always drafts; "always"); `exact` (the batch- and
    tree-invariant forward: bfloat16 outputs equal `ar`'s and do not depend on the batch;
    Llama-family models only); `stage_range` (name -> context
    manager around each stage of a step; default: NVTX ranges on CUDA); `adaptive_threads` (CPU:
    decode steps with one thread where faster; changes torch's process-wide thread count).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        method: str | None = None,
        index: Any = None,
        *,
        use_cuda_graphs: bool = True,
        check_every: int | None = None,
        continuous_batching: bool = True,
        stage_range: StageRange = nvtx_range,
        exact: bool = False,
        speculation: str = "adaptive",
        adaptive_threads: bool = False,
        **options: Any,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"SamDecoder takes a loaded model, got {type(model).__name__}; for a name or a path"
                " use SamDecoder.from_pretrained(model)"
            )
        if method is None:
            method = default_method(next(model.parameters()).device, store="store" in options)
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
        self.stage_range, self.exact = stage_range, bool(exact)
        if speculation not in SPECULATION_MODES:
            raise ValueError(
                f"speculation={speculation!r}: expected one of {', '.join(SPECULATION_MODES)}"
            )
        self.speculation, self.adaptive_threads = speculation, bool(adaptive_threads)
        self.last_stats: list[dict[str, Any]] = []
        self._runner = None
        self._decoder = None
        self._capacity = (0, 0)  # (max_reqs, max_len) of the current decoder
        self._lock = threading.Lock()
        self._validate_options()

    @classmethod
    def from_pretrained(
        cls,
        model: str = "default",
        method: str | None = None,
        index: Any = "default",
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        **kwargs: Any,
    ) -> SamDecoder:
        """Load `model` ("default": the embedded SmolLM2-135M-Instruct; or a local transformers
        checkpoint folder) with its tokenizer and wrap it. device "auto": CUDA when available;
        dtype "auto": bfloat16 on CUDA, float32 on CPU. The model and tokenizer are
        `decoder.model` / `decoder.tokenizer`; other keyword arguments go to SamDecoder."""
        dev = resolve_device(device)
        loaded, tokenizer = load_model(model, dev, resolve_dtype(dtype, dev))
        return cls(loaded, tokenizer, method, index, **kwargs)

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

    def ensure_capacity(
        self, num_reqs: int, max_len: int, sampling: GenerationConfig | None = None
    ):
        """The decoder (a Scheduler) for num_reqs slots of max_len tokens, built now if needed (so
        out-of-memory shows at set-up) and warmed up on a GPU (kernels compiled, step graphs of
        the full width captured for `sampling`'s mode, default greedy, so compilation stays out
        of the generation's time). Capacity only grows (the length in multiples of
        LEN_QUANTUM); more prompts than slots run through the slots in turn."""
        cap_reqs, cap_len = self._capacity
        if self._decoder is not None and num_reqs <= cap_reqs and max_len <= cap_len:
            engine = self._decoder.engine
            if self.device.type == "cuda" and not engine.is_warm(cap_reqs, sampling):
                engine.warm_up(cap_reqs, sampling)  # (a sampling mode not met yet)
            return self._decoder
        new_reqs = max(cap_reqs, num_reqs)
        new_len = max(cap_len, -(-max_len // LEN_QUANTUM) * LEN_QUANTUM)
        old_store = store_of(self._decoder.drafter) if self._decoder is not None else None
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
                self._decoder.engine.warm_up(new_reqs, sampling)
            if old_store is not None:  # a rebuilt decoder keeps what the store learnt
                store_of(self._decoder.drafter).copy_from(old_store)
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

    def save_store(self, path: str | os.PathLike | None = None):
        """Save the cross-request store (option `store`) to `path`, default its own file; the
        path written, or None when this decoder has no store (samgpu.drafters.parts.store)."""
        return None if self._decoder is None else save_store(self._decoder.drafter, path)

    # -- token-level entry point (CLI, benchmarks)

    def generate_ids(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_ids: Sequence[int] | int | None = (),
        seed: int | None = None,
        sample_keys: Sequence[int] | None = None,
        on_progress: Callable[[Any], None] | None = None,
        on_finish: Callable[[int, list[int], Any], None] | None = None,
        batch_size: int | None = None,
        stop_when: Callable[[int, list[int]], bool] | None = None,
    ):
        """Token ids in, samgpu.decoding.config.GenerationOutput out (tokens and stats per
        prompt). eos_token_ids: a list of ids, one id or None. sample_keys: one int a prompt, what
        its samples are keyed by with the seed (default: its index in `prompts`; a caller that
        splits a job into calls passes each prompt's index in the job, so that a seed gives
        every prompt its own samples whatever the split). on_progress(ProgressInfo) runs at
        every host check; on_finish(prompt index, tokens, RequestStats) as each request finishes
        (CUDA: while the next steps run); stop_when(prompt index, tokens so far) -> True ends a
        request at a host check (stop strings: completions.StopWatch). An argument of the wrong
        type or range raises a TypeError / ValueError naming it, before any buffer is allocated."""
        check_count("max_new_tokens", max_new_tokens)
        if batch_size is not None:
            check_count("batch_size", batch_size)
        check_types(
            {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed},
            none_is_unset=False,
        )
        config = GenerationConfig(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
            eos_token_ids=as_id_tuple(eos_token_ids, "eos_token_ids"),
            seed=seed,
            sample_keys=sample_key_tuple(sample_keys, len(prompts)),
            check_every=None if self.check_every is None else int(self.check_every),
            continuous=self.continuous_batching,
            speculation=self.speculation,
            adaptive_threads=self.adaptive_threads,
        )
        if not prompts:
            self.last_stats = []
            return GenerationOutput(tokens=[], stats=[])
        for i, p in enumerate(prompts):
            # (the first id only: a full scan costs ~0.1 s a run at thousands of prompts)
            if isinstance(p, (str, bytes)) or (len(p) > 0 and not is_int(p[0])):
                raise TypeError(f"prompt {i} must be a list of token ids (ints), got {p!r:.60}")
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
        decoder = self.ensure_capacity(num_reqs, self.needed_len(longest, max_new_tokens), config)
        with self._lock:
            out = decoder.generate(
                [list(map(int, p)) for p in prompts], config, on_progress, on_finish, stop_when
            )
        self.last_stats = [stats_dict(s) for s in out.stats]
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
        stop_ids = single_token_stops(req.stop, tokenizer)
        eos = eos_with_stops(req.eos_token_ids, stop_ids)

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
            stop_when=stop_watch(tokenizer, req.stop),
        )
        tokens = [list(t) for t in out.tokens]
        if req.stop:
            tokens = [cut_tokens_at_stop(t, tokenizer, req.stop, stop_ids)[0] for t in tokens]
        if streamer is not None:
            on_progress.flush(tokens[0])
            streamer.end()
        if as_text:
            done = [
                make_completion(t, {}, tokenizer, req.eos_token_ids, req.stop, stop_ids)
                for t in tokens
            ]
            return [c.text for c in done]
        return pack_like_hf(rows, tokens, req.pad_token_id)

    def _encode(self, prompt: Any, tokenizer) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("empty prompt: every prompt needs at least one token")
            return list(tokenizer(prompt).input_ids)
        check_conversation(prompt, "each prompt must be a string or")
        return encode_chat(tokenizer, list(prompt))


def sample_key_tuple(keys: Any, num_prompts: int) -> tuple[int, ...] | None:
    """generate_ids' sample_keys: None, or one int a prompt (a list, tuple, range, NumPy array or
    tensor of them) -> a tuple of ints; else a TypeError / ValueError naming the argument."""
    if keys is None:
        return None
    if isinstance(keys, torch.Tensor):
        keys = keys.tolist() if keys.dim() == 1 else keys
    ok = isinstance(keys, Iterable) and not isinstance(keys, (str, bytes, dict, torch.Tensor))
    keys = list(keys) if ok else keys
    if not ok or not all(is_int(k) for k in keys):
        raise TypeError(f"sample_keys must be a list of ints (one a prompt), got {keys!r:.60}")
    if len(keys) != num_prompts:
        raise ValueError(f"{len(keys)} sample_keys for {num_prompts} prompts: one key a prompt")
    return tuple(int(k) for k in keys)


def check_conversation(conv: Any, what: str) -> None:
    """A chat conversation: a non-empty list of {'role', 'content'} dicts, else a TypeError that
    starts with `what` (a transformers / jinja error from deep inside the template otherwise)."""
    ok = isinstance(conv, Sequence) and not isinstance(conv, (str, bytes)) and len(conv) > 0
    if not ok or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in conv
    ):
        raise TypeError(
            f"{what} a non-empty list of {{'role', 'content'}} dicts with string values, got "
            f"{conv!r:.80}"
        )
