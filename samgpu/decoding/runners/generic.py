"""Generic runner: any transformers causal LM whose cache is a standard per-layer K/V cache, run
through the model's own forward. Correct, slower: each verify step wraps the whole static cache in a
`DynamicCache` (which concatenates, copying every layer's cache) and attends over all `max_len`
slots with an explicit additive 4D mask; it is not CUDA-graph capturable (`graph_safe = False`).

Per verify step, with the static cache of L slots and N tree nodes:
  keys seen by the model = [static cache slots 0..L-1] + [the N nodes, appended by the model]
  mask[b, 0, i, p] = 0 if p < cache_len[b]  or  (p = L + j and tree_mask[b, i, j]), else -inf
  positions = the caller's `positions` (cache_len + depth)
Afterwards the nodes' K/V (the appended part) are copied to slots cache_len[b] + j, exactly as the
fast runner does, so KV compaction and commit work the same on both runners.
"""

from __future__ import annotations

import inspect

import torch

from samgpu.decoding.runners.base import (
    KVCache,
    RunnerBase,
    check_prefill_inputs,
    check_tree_inputs,
)


def _dynamic_cache():
    from transformers import DynamicCache

    return DynamicCache()


def _layer_kv(cache, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) [B, Hkv, T, D] of layer i of a transformers cache (5.x layers or legacy)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[i].keys, layers[i].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[i], cache.value_cache[i]
    return cache[i][0], cache[i][1]


def _cache_kwarg(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); use whichever forward accepts."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _num_layers(cache) -> int:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return len(layers)
    return len(cache)


class GenericRunner(RunnerBase):
    """transformers-forward runner for any causal LM (see module doc)."""

    graph_safe = False

    def __init__(self, model) -> None:
        params = list(model.parameters())
        if not params:
            raise ValueError("GenericRunner: the model has no parameters")
        self.model = model.eval()
        self.device = params[0].device
        # Tree masks are arbitrary 4D masks, which flash-attention / flex backends do not take.
        impl = getattr(model.config, "_attn_implementation", None) or ""
        if impl not in ("eager", "sdpa") and hasattr(model, "set_attn_implementation"):
            try:
                model.set_attn_implementation("sdpa")
            except (ValueError, ImportError):
                model.set_attn_implementation("eager")
        self._cache_kwarg = _cache_kwarg(model)
        # Probe once: one token through the model gives the cache geometry and the vocabulary.
        probe = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        cache = _dynamic_cache()
        with torch.no_grad():
            result = model(input_ids=probe, use_cache=True, **{self._cache_kwarg: cache})
        try:
            shapes = {tuple(_layer_kv(cache, i)[0].shape) for i in range(_num_layers(cache))}
        except (AttributeError, IndexError, TypeError) as exc:
            raise ValueError(
                f"GenericRunner: {type(model).__name__} returns a {type(cache).__name__} cache "
                "without per-layer key/value tensors; not supported"
            ) from exc
        if len(shapes) != 1:
            raise ValueError(
                f"GenericRunner: layers with different K/V shapes {sorted(shapes)}: not supported"
            )
        (_, self.num_kv_heads, _, self.head_dim) = shapes.pop()
        self.num_layers = _num_layers(cache)
        self.dtype = _layer_kv(cache, 0)[0].dtype
        self.vocab_size = result.logits.shape[-1]
        self.logits_dtype = result.logits.dtype  # (some models return fp32 logits: kept)
        self.hidden_size = int(model.config.hidden_size)
        window = getattr(model.config, "sliding_window", None)
        self.max_context = window if isinstance(window, int) and window > 0 else None

    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        cache: KVCache,
        *,
        hidden_out: torch.Tensor | None = None,
    ) -> None:
        check_prefill_inputs(input_ids, lengths, cache, self.device)
        b, t = input_ids.shape
        if t > 0:
            # Right padding + the model's causal mask: real tokens never see pads.
            positions = torch.arange(t, device=self.device).expand(b, t)
            past = _dynamic_cache()
            result = self.model(
                input_ids=input_ids.long(),
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                output_hidden_states=hidden_out is not None,
                **{self._cache_kwarg: past},
            )
            if hidden_out is not None:
                hidden_out[:b, :t].copy_(result.hidden_states[-1])
            for li in range(self.num_layers):
                k, v = _layer_kv(past, li)
                cache.k[li, :b, :, :t] = k
                cache.v[li, :b, :, :t] = v
        cache.cache_len[:b].copy_(lengths)

    @torch.no_grad()
    def forward_tree(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        tree_mask: torch.Tensor,
        cache: KVCache,
        out: torch.Tensor,
        hidden_out: torch.Tensor | None = None,
        *,
        live: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`live` is accepted and ignored (transformers' attention reads every row's prefix)."""
        check_tree_inputs(
            tokens, positions, tree_mask, cache, out, self.vocab_size, self.device, hidden_out
        )
        b, n = tokens.shape
        max_len = cache.max_len
        cache_len = cache.cache_len[:b].to(torch.int64)
        past = _dynamic_cache()
        for li in range(self.num_layers):
            past.update(cache.k[li, :b], cache.v[li, :b], li)
        slots = torch.arange(max_len, device=self.device)
        visible = torch.cat(
            [(slots[None, :] < cache_len[:, None])[:, None, :].expand(b, n, max_len), tree_mask],
            dim=2,
        )  # [B, N, L + N]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~visible, torch.finfo(self.dtype).min)
        result = self.model(
            input_ids=tokens.long(),
            position_ids=positions.long(),
            attention_mask=mask[:, None],
            use_cache=True,
            output_hidden_states=hidden_out is not None,
            **{self._cache_kwarg: past},
        )
        if hidden_out is not None:
            hidden_out.copy_(result.hidden_states[-1])
        slot = cache_len[:, None] + torch.arange(n, device=self.device)  # [B, N]
        slot = slot[:, None, :, None].expand(b, self.num_kv_heads, n, self.head_dim)
        for li in range(self.num_layers):
            k, v = _layer_kv(past, li)
            cache.k[li, :b].scatter_(2, slot, k[:, :, max_len:])
            cache.v[li, :b].scatter_(2, slot, v[:, :, max_len:])
        out.copy_(result.logits)
        return out
