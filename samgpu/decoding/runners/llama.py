"""Fast runner for the Llama family (Llama 2/3, SmolLM2, Vicuna, Mistral, Qwen2/2.5, Qwen3).

The forward is re-implemented in plain torch over the weights of a transformers model object
(safetensors or GGUF-loaded alike), so that one verify step has static shapes, allocates nothing
that depends on data and never synchronises with the host: it can be captured in a CUDA graph.
  embed -> L x [RMSNorm -> fused QKV (+bias, Qwen2) -> (q/k RMSNorm, Qwen3) -> RoPE at per-token
  positions -> write K/V into the static cache -> attention -> o_proj -> residual -> RMSNorm ->
  fused gate/up -> SiLU * up -> down -> residual] -> RMSNorm -> lm_head (tied or not).
Attention: prefill is `samgpu.kernels.prefill_attention` (causal flash attention in Triton: no
per-length planning, chunks at any start) after `rope_kv`, the verify step
`samgpu.kernels.rope_tree_attention` (split-KV, with RoPE and the K/V write fused
in: one launch a layer fewer); both fall back to references on CPU. With `exact=True` both are
rope_kv and then the invariant kernels of `samgpu.kernels.exact_attention`: a token's attention
output then depends on its own context only, whatever the batch, the tree, or prefill vs decode
(exact mode, docs/ARCHITECTURE.md).

Weights: q/k/v and gate/up projections are fused into one matrix each; the model's own parameters
are re-pointed at slices of the fused matrices, so nothing is duplicated and the transformers model
keeps working. The numerics follow transformers' Llama code (RMSNorm in fp32, cos/sin computed in
fp32 then cast), so fp32 logits match it to rounding.

Rejected (the caller falls back to the generic runner): other architectures, non-SiLU MLPs, MLP
biases, dynamic/longrope RoPE, partial rotary, quantized (non-float) weights, weights spread over
several devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from samgpu.decoding.runners.base import (
    KVCache,
    RunnerBase,
    check_prefill_inputs,
    check_tree_inputs,
)
from samgpu.kernels.exact_attention import exact_attention, exact_prefill_attention
from samgpu.kernels.exact_plan import exact_chain_plan, exact_tree_plan
from samgpu.kernels.prefill_attention import prefill_attention
from samgpu.kernels.rms_norm import rms_norm
from samgpu.kernels.rope_kv import rope_kv
from samgpu.kernels.rope_tree_attention import rope_tree_attention
from samgpu.kernels.silu_mul import silu_mul
from samgpu.kernels.tree_attention import step_plan

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class LayerWeights:
    """One decoder layer, fused where it saves launches. H hidden, D head_dim, I intermediate."""

    input_norm: torch.Tensor  # [H]
    qkv: torch.Tensor  # [(Hq + 2 * Hkv) * D, H]
    qkv_bias: torch.Tensor | None  # [(Hq + 2 * Hkv) * D] (Qwen2)
    q_norm: torch.Tensor | None  # [D] (Qwen3)
    k_norm: torch.Tensor | None  # [D] (Qwen3)
    o_proj: torch.Tensor  # [H, Hq * D]
    o_bias: torch.Tensor | None  # [H]
    post_norm: torch.Tensor  # [H]
    gate_up: torch.Tensor  # [2 * I, H]
    down: torch.Tensor  # [H, I]


def _rope_type(config) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not params:
        return "default"
    return params.get("rope_type", params.get("type", "default"))


def _fuse(modules: list[torch.nn.Linear], attr: str) -> torch.Tensor | None:
    """Concatenate `attr` (weight/bias) of `modules` on dim 0; re-point each module at its slice."""
    parts = [getattr(m, attr) for m in modules]
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise ValueError(f"some but not all projections have a {attr}")
    fused = torch.cat([p.data for p in parts], dim=0)
    start = 0
    for m, p in zip(modules, parts, strict=True):
        stop = start + p.shape[0]
        getattr(m, attr).data = fused[start:stop]
        start = stop
    return fused


class LlamaRunner(RunnerBase):
    """Static-cache, ragged-batch runner for Llama-family transformers models (see module doc)."""

    graph_safe = True

    @staticmethod
    def unsupported_reason(model) -> str | None:
        """None if the fast path supports `model`, else a short reason."""
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            return f"model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
        inner = getattr(model, "model", None)
        if inner is None or not all(
            hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")
        ):
            return "no model.embed_tokens/layers/norm/rotary_emb"
        if getattr(model, "lm_head", None) is None:
            return "no lm_head"
        if getattr(config, "hidden_act", "silu") != "silu":
            return f"hidden_act {config.hidden_act!r} (only silu)"
        if getattr(config, "mlp_bias", False):
            return "MLP biases"
        rope = _rope_type(config)
        if rope not in SUPPORTED_ROPE_TYPES:
            return f"rope_type {rope!r} (supported: {SUPPORTED_ROPE_TYPES})"
        head_dim = inner.layers[0].self_attn.head_dim
        if inner.rotary_emb.inv_freq.numel() * 2 != head_dim:
            return "partial rotary embedding"
        params = list(model.parameters())
        if any(p.dtype not in FLOAT_DTYPES for p in params):
            return "quantized (non-float) weights"
        if len({p.device for p in params}) != 1 or len({p.dtype for p in params}) != 1:
            return "weights on several devices or in several dtypes"
        return None

    def __init__(self, model, *, exact: bool = False, input_proj: torch.nn.Linear | None = None):
        """`input_proj` (an EAGLE head's fc): the layer stack's input becomes
        input_proj(cat(embed(tokens), hidden_in)), and prefill / forward_tree take `hidden_in`."""
        reason = self.unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"LlamaRunner: unsupported model: {reason}")
        config = model.config
        inner = model.model
        attn0 = inner.layers[0].self_attn
        self.model = model
        self.exact = bool(exact)
        self.packs_prompts = not self.exact  # (exact mode's attention plans padded rows)
        self.input_proj = input_proj
        self.config = config
        self.num_layers = len(inner.layers)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.hidden_size = config.hidden_size
        self.head_dim = attn0.head_dim
        self.scale = float(getattr(attn0, "scaling", 1.0 / math.sqrt(self.head_dim)))
        self.embed = inner.embed_tokens.weight  # [V, H]
        self.lm_head = model.lm_head.weight  # [V, H] (the embedding itself when tied)
        self.vocab_size = self.lm_head.shape[0]
        self.final_norm = inner.norm.weight
        self.eps = float(config.rms_norm_eps)
        self.device = self.embed.device
        self.dtype = self.logits_dtype = self.embed.dtype
        rotary = inner.rotary_emb
        self.inv_freq = rotary.inv_freq.detach().to(self.device, torch.float32)  # [D / 2]
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        # Sliding-window models equal full attention while every position is inside the window.
        # (Mistral reads config.sliding_window; Qwen2/3 set it on their sliding layers only.)
        windows = [getattr(layer.self_attn, "sliding_window", None) for layer in inner.layers]
        if config.model_type == "mistral":
            windows.append(getattr(config, "sliding_window", None))
        windows = [w for w in windows if w]
        self.max_context = min(windows) if windows else None
        self.layers = [self._layer_weights(layer) for layer in inner.layers]

    def _layer_weights(self, layer) -> LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        qkv_modules = [attn.q_proj, attn.k_proj, attn.v_proj]
        q_norm = getattr(attn, "q_norm", None)
        k_norm = getattr(attn, "k_norm", None)
        return LayerWeights(
            input_norm=layer.input_layernorm.weight,
            qkv=_fuse(qkv_modules, "weight"),
            qkv_bias=_fuse(qkv_modules, "bias"),
            q_norm=None if q_norm is None else q_norm.weight,
            k_norm=None if k_norm is None else k_norm.weight,
            o_proj=attn.o_proj.weight,
            o_bias=attn.o_proj.bias,
            post_norm=layer.post_attention_layernorm.weight,
            gate_up=_fuse([mlp.gate_proj, mlp.up_proj], "weight"),
            down=mlp.down_proj.weight,
        )

    # ------------------------------------------------------------------------------- pieces

    def _embed(self, tokens: torch.Tensor, hidden_in: torch.Tensor | None) -> torch.Tensor:
        """The residual stream's input: token embeddings, or with `input_proj` the projection of
        (embedding, hidden_in) (an EAGLE head)."""
        x = F.embedding(tokens, self.embed)
        if self.input_proj is None:
            if hidden_in is not None:
                raise ValueError("hidden_in is for runners built with input_proj")
            return x
        if hidden_in is None or hidden_in.shape[:2] != tokens.shape:
            got = None if hidden_in is None else tuple(hidden_in.shape)
            raise ValueError(
                f"a runner with input_proj needs hidden_in [B, T, H] for tokens "
                f"{tuple(tokens.shape)}, got {got}"
            )
        return self.input_proj(torch.cat([x, hidden_in.to(x.dtype)], dim=-1))

    def _rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, T, D / 2] fp32 for int positions [B, T] (transformers' formula), computed
        once per forward and shared by all layers."""
        freqs = positions[..., None].to(torch.float32) * self.inv_freq
        cos, sin = freqs.cos(), freqs.sin()
        if self.rope_scaling != 1.0:  # (x * 1.0 is x: two launches saved per forward)
            cos, sin = cos * self.rope_scaling, sin * self.rope_scaling
        return cos, sin

    def _qkv(self, li: int, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, H] -> layer li's fused q/k/v rows [B, T, (Hq + 2 Hkv) * D], before RoPE."""
        w = self.layers[li]
        qkv = F.linear(x, w.qkv, w.qkv_bias)
        if w.q_norm is not None:  # Qwen3: RMSNorm of every q and k head before RoPE
            hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
            q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
            q = rms_norm(q.unflatten(-1, (hq, d)).contiguous(), w.q_norm, self.eps)[0]
            k = rms_norm(k.unflatten(-1, (hkv, d)).contiguous(), w.k_norm, self.eps)[0]
            qkv = torch.cat([q.flatten(-2), k.flatten(-2), v], dim=-1)
        return qkv

    def _rope(self, li: int, qkv, cos, sin, slot_start, cache: KVCache) -> torch.Tensor:
        """Rotated q [B, T, Hq, D]; rotated k and v stored in layer li's cache at slots
        slot_start[b] + t."""
        b = qkv.shape[0]
        return rope_kv(
            qkv, cos, sin, slot_start, cache.k[li, :b], cache.v[li, :b], num_q_heads=self.num_heads
        )

    def _layers(self, h: torch.Tensor, positions: torch.Tensor, attend):
        """The decoder stack over h [B, T, H] (the residual stream, updated in place); returns the
        final-normed hidden states. attend(li, qkv, cos, sin) -> [B, T, Hq, D]: RoPE, the K/V
        into layer li's cache, attention."""
        cos, sin = self._rope_tables(positions)
        b, t, _ = h.shape
        x, _ = rms_norm(h, self.layers[0].input_norm, self.eps)
        for li, w in enumerate(self.layers):
            attn = attend(li, self._qkv(li, x), cos, sin).reshape(b, t, -1)
            x, h = rms_norm(F.linear(attn, w.o_proj, w.o_bias), w.post_norm, self.eps, residual=h)
            mlp = F.linear(silu_mul(F.linear(x, w.gate_up)), w.down)
            last = li + 1 == len(self.layers)
            norm = self.final_norm if last else self.layers[li + 1].input_norm
            x, h = rms_norm(mlp, norm, self.eps, residual=h)
        return x

    # ------------------------------------------------------------------------------ prefill

    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        cache: KVCache,
        start: torch.Tensor | None = None,
        *,
        hidden_in: torch.Tensor | None = None,
        hidden_out: torch.Tensor | None = None,
        segment_start: torch.Tensor | None = None,
    ) -> None:
        """Prompt tokens into the cache: token t of row b at slot start[b] + t (start: tokens of
        the row already cached, a chunked prefill; default 0), attending causally to slots
        0 .. start[b] + t. cache_len[:B] becomes start + lengths. `hidden_out [B, T', H]`
        (T' >= T): the last hidden states of the T columns (pad columns hold garbage);
        `hidden_in [B, T, H]`: with input_proj. `segment_start [B, T] int32` (not with start,
        not in exact mode): packed prompts, see base.py; token t is at position
        t - segment_start[b, t] and attends to slots segment_start[b, t] .. t."""
        check_prefill_inputs(input_ids, lengths, cache, self.device)
        b, t = input_ids.shape
        lengths = lengths.to(torch.int32)
        if segment_start is not None and (start is not None or not self.packs_prompts):
            raise ValueError(
                "prefill: segment_start (packed prompts) is neither for exact mode nor with start"
            )
        if start is None:
            start = torch.zeros(b, dtype=torch.int32, device=self.device)
        if t > 0:
            positions = start[:, None].long() + torch.arange(t, device=self.device)
            if segment_start is not None:
                positions = positions - segment_start[:, :t]
            plan = exact_chain_plan(start, lengths, t) if self.exact else None

            def attend(li, qkv, cos, sin):
                # Right padding: pad rows (t >= lengths[b]) output zeros; their K/V slots are
                # overwritten later and never attended to.
                q = self._rope(li, qkv, cos, sin, start, cache)
                k, v = cache.k[li, :b], cache.v[li, :b]
                if plan is not None:
                    return exact_prefill_attention(
                        q, k, v, start, lengths, scale=self.scale, plan=plan
                    )
                return prefill_attention(q, k, v, start, lengths, segment_start, scale=self.scale)

            h = self._embed(input_ids, hidden_in)
            x = self._layers(h, positions, attend)
            if hidden_out is not None:
                hidden_out[:b, :t].copy_(x)
        cache.cache_len[:b].copy_(start + lengths)

    # --------------------------------------------------------------------------- tree step

    @torch.no_grad()
    def forward_tree(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        tree_mask: torch.Tensor,
        cache: KVCache,
        out: torch.Tensor | None,
        hidden_out: torch.Tensor | None = None,
        *,
        hidden_in: torch.Tensor | None = None,
        live: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`out` None: no lm_head (a head that computes the logits it needs); returns hidden_out
        then, which must be given. `hidden_in`: with input_proj (an EAGLE head). `live [B]` bool:
        the rows whose outputs are used; the others' attention skips their cached prefix (a
        finished or empty slot still runs through the step's fixed shape: at B=256 with half
        the slots drained, reading their caches was half of the attention's traffic); their
        outputs are garbage. Not in exact mode (its plan covers every row)."""
        if out is None and hidden_out is None:
            raise ValueError("forward_tree: give out (logits) or hidden_out (or both)")
        check_tree_inputs(
            tokens, positions, tree_mask, cache, out, self.vocab_size, self.device, hidden_out
        )
        b = tokens.shape[0]
        cache_len = cache.cache_len[:b]
        plan = exact_tree_plan(cache_len, tree_mask) if self.exact else None
        # the prefix each row's attention reads (nodes still go to slots cache_len + i)
        seen = cache_len if live is None or self.exact else torch.where(live[:b], cache_len, 0)
        ref = None if self.exact else step_plan(seen, tree_mask, cache.k[0])

        def attend(li, qkv, cos, sin):
            # Node i of sequence b is stored at slot cache_len[b] + i (in the kernel, no sync).
            k, v = cache.k[li], cache.v[li]
            if plan is not None:
                q = self._rope(li, qkv, cos, sin, cache_len, cache)
                return exact_attention(q, k, v, cache_len, tree_mask, scale=self.scale, plan=plan)
            return rope_tree_attention(
                qkv,
                cos,
                sin,
                cache_len,
                k[:b],
                v[:b],
                seen,
                tree_mask,
                num_q_heads=self.num_heads,
                scale=self.scale,
                plan=ref,
            )

        x = self._layers(self._embed(tokens, hidden_in), positions, attend)
        if hidden_out is not None:
            hidden_out.copy_(x)
        if out is None:
            return hidden_out
        if out.dtype == x.dtype and out.is_contiguous():  # straight in: no logits-sized copy
            torch.mm(x.flatten(0, 1), self.lm_head.t(), out=out.view(-1, self.vocab_size))
        else:
            out.copy_(F.linear(x, self.lm_head))
        return out
