"""What every model runner shares: the KV cache, the Runner protocol, cache allocation and the cheap
input checks. The runners themselves are `llama.LlamaRunner` and `generic.GenericRunner`;
`samgpu.decoding.runners.make_runner` picks one.

Model runners: the target model's forward over a prompt (prefill) and over a draft tree (verify).

Contract (docs/ARCHITECTURE.md "Runner"):
- `allocate_cache(max_reqs, max_len) -> KVCache`: one static K and one static V tensor
  `[num_layers, max_reqs, num_kv_heads, max_len, head_dim]` in the runner's dtype, plus
  `cache_len [max_reqs] int32` (ragged batch: each sequence has its own length).
- `prefill(input_ids [B, T], lengths [B], cache, *, hidden_out=None)`: right-padded prompts;
  writes the K/V of `input_ids[b, :lengths[b]]` at positions `0 .. lengths[b]-1`; sets
  `cache_len[:B] = lengths`; with `hidden_out [B, T' >= T, H]` the last hidden states of the T
  columns go there (pad columns: garbage), for drafters that need the prompt's (an EAGLE head).
  Runners with `packs_prompts` also take `segment_start [B, T] int32`: row b holds several prompts
  back to back, token t belongs to the prompt starting at column segment_start[b, t], sits at
  position t - segment_start[b, t] and attends only to its own prompt (its K/V at slot t); one
  call then prefills an admission's prompts with no padding between them.
- `forward_tree(tokens [B, N], positions [B, N], tree_mask [B, N, N] bool, cache, out [B, N, V],
  hidden_out=None)`: writes node i's K/V at `cache_len + i`; query i attends to `cache[:cache_len]`
  and to the tree nodes j with `tree_mask[b, i, j]`; logits go to `out` (float32, or the runner
  dtype: written without a copy); with `hidden_out [B, N, H]` (runner dtype) the last hidden states
  (after the final norm, the input of the lm_head) go there too, for model-based drafters.
  `cache_len` is not advanced (commit / kv_compact do that).
  `B` may be smaller than the cache's capacity: the first `B` slots are used.

Two implementations:
- `LlamaRunner` (llama.py): Llama / Mistral / Qwen2 / Qwen3 / SmolLM2 in plain torch plus the
  Triton tree-attention kernel; static shapes, no host sync, CUDA-graph capturable.
- `GenericRunner` (generic.py): any transformers causal LM through its own forward with a 4D
  mask; correct and slower (concatenates the cache every step, attends over all `max_len` slots).

`make_runner(model)` picks the fast one when `LlamaRunner.unsupported_reason(model)` is None and
otherwise warns once and falls back to the generic one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class KVCache:
    """Static KV cache of a batch, preallocated at capacity."""

    k: torch.Tensor  # [num_layers, max_reqs, num_kv_heads, max_len, head_dim] runner dtype
    v: torch.Tensor  # [num_layers, max_reqs, num_kv_heads, max_len, head_dim] runner dtype
    cache_len: torch.Tensor  # [max_reqs] int32; tokens of each sequence held in the cache

    @property
    def max_reqs(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @staticmethod
    def empty(
        num_layers: int,
        max_reqs: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        if max_reqs < 1 or max_len < 1:
            raise ValueError(
                f"KV cache needs max_reqs >= 1 and max_len >= 1, got {max_reqs}, {max_len}"
            )
        shape = (num_layers, max_reqs, num_kv_heads, max_len, head_dim)
        return KVCache(
            k=torch.zeros(shape, dtype=dtype, device=device),
            v=torch.zeros(shape, dtype=dtype, device=device),
            cache_len=torch.zeros(max_reqs, dtype=torch.int32, device=device),
        )


class Runner(Protocol):
    vocab_size: int
    hidden_size: int
    num_layers: int
    device: torch.device
    dtype: torch.dtype
    logits_dtype: torch.dtype  # what forward_tree's logits come out in (the step's buffer)
    graph_safe: bool  # forward_tree can be captured in a CUDA graph
    packs_prompts: bool  # prefill takes segment_start (packed prompts)

    def allocate_cache(self, max_reqs: int, max_len: int) -> KVCache: ...

    def prefill(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        cache: KVCache,
        *,
        hidden_out: torch.Tensor | None = None,
        segment_start: torch.Tensor | None = None,
    ) -> None: ...

    def forward_tree(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        tree_mask: torch.Tensor,
        cache: KVCache,
        out: torch.Tensor | None,
        hidden_out: torch.Tensor | None = None,
        *,
        live: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class RunnerBase:
    """Cache allocation shared by the runners. Subclasses set num_layers, num_kv_heads, head_dim,
    dtype, device and max_context (a sliding window bounding max_len, or None)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    max_context: int | None = None
    packs_prompts: bool = False

    def allocate_cache(self, max_reqs: int, max_len: int) -> KVCache:
        if self.max_context is not None and max_len > self.max_context:
            raise ValueError(
                f"{type(self).__name__}: max_len={max_len} exceeds the model's sliding window "
                f"{self.max_context}; use a shorter max_len or make_runner(prefer='generic')"
            )
        return KVCache.empty(
            self.num_layers,
            max_reqs,
            self.num_kv_heads,
            max_len,
            self.head_dim,
            dtype=self.dtype,
            device=self.device,
        )


# Input validation shared by the runners: cheap metadata only (shapes, dtypes, devices), no sync.

_INDEX_DTYPES = (torch.int32, torch.int64)
_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_prefill_inputs(
    input_ids: torch.Tensor, lengths: torch.Tensor, cache: KVCache, device: torch.device
) -> None:
    if input_ids.dim() != 2 or input_ids.dtype not in _INDEX_DTYPES:
        raise ValueError(
            f"prefill: input_ids must be [B, T] int32/int64, got {tuple(input_ids.shape)} "
            f"{input_ids.dtype}"
        )
    b, t = input_ids.shape
    if lengths.shape != (b,) or lengths.dtype not in _INDEX_DTYPES:
        raise ValueError(
            f"prefill: lengths must be [B={b}] int32/int64, "
            f"got {tuple(lengths.shape)} {lengths.dtype}"
        )
    _check_cache(cache, b, "prefill")
    if t > cache.max_len:
        raise ValueError(f"prefill: prompt width T={t} exceeds the cache's max_len={cache.max_len}")
    for name, x in (("input_ids", input_ids), ("lengths", lengths)):
        if x.device != cache.k.device or x.device.type != device.type:
            raise ValueError(f"prefill: {name} is on {x.device}, the runner on {device}")


def check_tree_inputs(
    tokens: torch.Tensor,
    positions: torch.Tensor,
    tree_mask: torch.Tensor,
    cache: KVCache,
    out: torch.Tensor | None,
    vocab_size: int,
    device: torch.device,
    hidden_out: torch.Tensor | None = None,
) -> None:
    if tokens.dim() != 2 or tokens.dtype not in _INDEX_DTYPES:
        raise ValueError(
            f"forward_tree: tokens must be [B, N] int32/int64, "
            f"got {tuple(tokens.shape)} {tokens.dtype}"
        )
    b, n = tokens.shape
    if positions.shape != (b, n) or positions.dtype not in _INDEX_DTYPES:
        raise ValueError(
            f"forward_tree: positions must be [B={b}, N={n}] int32/int64 like tokens, got "
            f"{tuple(positions.shape)} {positions.dtype}"
        )
    if tree_mask.shape != (b, n, n) or tree_mask.dtype != torch.bool:
        raise ValueError(
            f"forward_tree: tree_mask must be [B={b}, N={n}, N={n}] bool, got "
            f"{tuple(tree_mask.shape)} {tree_mask.dtype}"
        )
    if out is not None and (out.shape != (b, n, vocab_size) or out.dtype not in _LOGIT_DTYPES):
        raise ValueError(
            f"forward_tree: out must be [B={b}, N={n}, V={vocab_size}] float32/bfloat16/float16, "
            f"got {tuple(out.shape)} {out.dtype}"
        )
    _check_cache(cache, b, "forward_tree")
    if hidden_out is not None and (
        hidden_out.shape[:2] != (b, n) or hidden_out.device != tokens.device
    ):
        raise ValueError(
            f"forward_tree: hidden_out must be [B={b}, N={n}, H] on {tokens.device}, got "
            f"{tuple(hidden_out.shape)} on {hidden_out.device}"
        )
    if n > cache.max_len:
        raise ValueError(f"forward_tree: N={n} nodes exceed the cache's max_len={cache.max_len}")
    for name, x in (
        ("tokens", tokens),
        ("positions", positions),
        ("tree_mask", tree_mask),
        ("out", out if out is not None else tokens),
    ):
        if x.device != cache.k.device or x.device.type != device.type:
            raise ValueError(f"forward_tree: {name} is on {x.device}, the runner on {device}")


def _check_cache(cache: KVCache, b: int, where: str) -> None:
    if cache.k.dim() != 5 or cache.k.shape != cache.v.shape:
        raise ValueError(
            f"{where}: cache.k/v must be [layers, max_reqs, kv_heads, max_len, head_dim], got "
            f"{tuple(cache.k.shape)} and {tuple(cache.v.shape)}"
        )
    if cache.cache_len.shape != (cache.max_reqs,) or cache.cache_len.dtype != torch.int32:
        raise ValueError(
            f"{where}: cache.cache_len must be [{cache.max_reqs}] int32, got "
            f"{tuple(cache.cache_len.shape)} {cache.cache_len.dtype}"
        )
    if b > cache.max_reqs:
        raise ValueError(f"{where}: batch of {b} exceeds the cache's max_reqs={cache.max_reqs}")
