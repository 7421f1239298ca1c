"""The EAGLE head: its module, its file, and how it is tied to a target model.

The head (Li et al., EAGLE / EAGLE-2) predicts the target's next last-hidden-state from a pair
(token embedding, target hidden state), one position ahead:
  pair p = (embed(x[p+1]), f[p])   f[p]: the target's last hidden state at position p (after its
                                   final norm: the input of its lm_head), x[p+1]: the next token
  g[p]   = norm(layer(fc(cat(embed(x[p+1]), f[p]))))   at position p (RoPE, causal over pairs)
  g[p] approximates f[p+1]; lm_head(g[p]) drafts x[p+2].
`fc` is Linear(2H -> H, bias), `layer` one decoder layer of the target's shape, `norm` an RMSNorm;
embed and lm_head are the target's own, frozen. The module is a transformers LlamaForCausalLM of
one layer whose embedding and lm_head are the target's tensors, plus `fc`: training runs it
through transformers (`EagleHead.forward`, inputs_embeds), inference through samgpu's LlamaRunner
(`input_proj`), with the same numerics.

File: safetensors of the trained tensors ("fc.weight", "fc.bias", "layer.*" as in transformers'
LlamaDecoderLayer, "norm.weight") with string metadata "samgpu_eagle" = JSON {format, config (the
head's LlamaConfig fields), target (vocab_size, hidden_size, name), provenance (command, data,
steps, val_top1, ...)}; beside it nothing: the sha256 of the file is recorded by whoever ships it
(samgpu/data/eagle/*.sha256 for the packaged head).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = 1
META_KEY = "samgpu_eagle"
CONFIG_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_parameters",
    "max_position_embeddings",
    "hidden_act",
    "attention_bias",
)


def head_config_from_target(target_config) -> dict[str, Any]:
    """The head's config fields: the target's shape, one layer (Llama-family targets)."""
    out = {}
    for name in CONFIG_FIELDS:
        value = getattr(target_config, name, None)
        if value is not None:
            out[name] = value
    out.setdefault("head_dim", target_config.hidden_size // target_config.num_attention_heads)
    out["attention_bias"] = bool(out.get("attention_bias", False))
    return out


def _llama_config(fields: dict[str, Any], vocab_size: int):
    from transformers import LlamaConfig

    config = LlamaConfig(
        **fields,
        num_hidden_layers=1,
        vocab_size=vocab_size,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    config.tie_word_embeddings = False
    return config


class EagleHead(nn.Module):
    """fc + a one-layer Llama whose embed_tokens / lm_head are the target's (module doc)."""

    def __init__(self, fields: dict[str, Any], embed: torch.Tensor, lm_head: torch.Tensor):
        super().__init__()
        from transformers import LlamaForCausalLM

        hidden = int(fields["hidden_size"])
        if embed.shape[1] != hidden or lm_head.shape[1] != hidden:
            raise ValueError(
                f"EAGLE head of hidden size {hidden} does not fit a target of hidden size "
                f"{embed.shape[1]}"
            )
        self.fields = dict(fields)
        self.fc = nn.Linear(2 * hidden, hidden, bias=True, device=embed.device, dtype=embed.dtype)
        # built with a one-token vocabulary, then given the target's (no vocabulary-sized copy)
        model = LlamaForCausalLM(_llama_config(fields, vocab_size=1)).to(embed.device)
        model.model.embed_tokens.weight = nn.Parameter(embed, requires_grad=False)
        model.lm_head.weight = nn.Parameter(lm_head, requires_grad=False)
        model.config.vocab_size = int(lm_head.shape[0])
        self.model = model.to(dtype=embed.dtype)
        self.reset_parameters()

    @property
    def layer(self) -> nn.Module:
        return self.model.model.layers[0]

    @property
    def norm(self) -> nn.Module:
        return self.model.model.norm

    def reset_parameters(self, seed: int | None = None) -> None:
        """Fresh trainable weights (transformers' init scale), deterministic with `seed`."""
        gen = torch.Generator().manual_seed(0 if seed is None else seed)
        std = float(getattr(self.model.config, "initializer_range", 0.02))
        for name, p in self.trainable().items():
            with torch.no_grad():
                if name.endswith("norm.weight") or "layernorm" in name:
                    p.fill_(1.0)
                elif name == "fc.bias":
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)

    def trainable(self) -> dict[str, nn.Parameter]:
        """The head's own tensors by file name: fc.*, layer.*, norm.weight."""
        out = {f"fc.{n}": p for n, p in self.fc.named_parameters()}
        out.update({f"layer.{n}": p for n, p in self.layer.named_parameters()})
        out["norm.weight"] = self.norm.weight
        return out

    def forward(
        self, next_tokens: torch.Tensor, hidden: torch.Tensor, position_ids=None
    ) -> torch.Tensor:
        """Training / reference forward over whole sequences: next_tokens [B, T] (x[p+1]), hidden
        [B, T, H] (f[p]) -> g [B, T, H], causal over the T pairs (right padding is harmless: a
        pair never attends to a later one)."""
        embeds = self.model.model.embed_tokens(next_tokens)
        x = self.fc(torch.cat([embeds, hidden.to(embeds.dtype)], dim=-1))
        out = self.model.model(inputs_embeds=x, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def logits(self, g: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(g)


def head_for_target(model, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> EagleHead:
    """A fresh head (weights from `seed`) for a transformers Llama-family target: the target's
    shape, and copies of its embedding and lm_head in `dtype`, frozen, on the target's device."""
    embed = model.get_input_embeddings().weight.detach().to(dtype)
    lm_head = model.get_output_embeddings().weight.detach().to(dtype)
    head = EagleHead(head_config_from_target(model.config), embed, lm_head)
    head.reset_parameters(seed)
    return head


@dataclass
class HeadFile:
    """A head file's contents: config fields, tensors by name, metadata (module doc)."""

    fields: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    target: dict[str, Any] = field(default_factory=dict)  # vocab_size, hidden_size, name
    provenance: dict[str, Any] = field(default_factory=dict)


def save_head(
    path: str | Path, head: EagleHead, target: dict, provenance: dict, *, dtype=None
) -> None:
    """Write `head`'s trained tensors (in `dtype`, default their own) and metadata to `path`
    (safetensors), atomically."""
    from safetensors.torch import save

    from samgpu.files import atomic_write

    meta = {"format": FORMAT, "config": head.fields, "target": target, "provenance": provenance}
    tensors = {
        n: p.detach().to("cpu", dtype or p.dtype).contiguous() for n, p in head.trainable().items()
    }

    blob = save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write(Path(path), lambda f: f.write(blob))


def read_head(path: str | Path, *, tensors: bool = True) -> HeadFile:
    """A head file's contents (`tensors=False`: its metadata alone, tensors left unread);
    ValueError naming the file when it is not one."""
    import safetensors
    from safetensors import safe_open

    # (the library's own error type, not an OSError / ValueError; named so in every version)
    SafetensorError = getattr(safetensors, "SafetensorError", RuntimeError)  # noqa: N806

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            arrays = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"{path}: not a readable EAGLE head file ({e})") from None
    if raw is None:
        raise ValueError(f"{path}: a safetensors file without samgpu EAGLE metadata")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: EAGLE head format {meta.get('format')}, expected {FORMAT}")
    return HeadFile(meta["config"], arrays, meta.get("target", {}), meta.get("provenance", {}))


def load_head(
    path: str | Path, embed: torch.Tensor, lm_head: torch.Tensor, *, dtype=None
) -> EagleHead:
    """The head in `path` tied to a target's embed [V, H] and lm_head [V, H] (their device;
    `dtype`: the head's, default the embedding's). ValueError when it does not fit the target."""
    content = read_head(path)
    vocab = content.target.get("vocab_size")
    if vocab is not None and int(vocab) != lm_head.shape[0]:
        raise ValueError(
            f"{path}: EAGLE head trained for a vocabulary of {vocab}, the target has "
            f"{lm_head.shape[0]}"
        )
    dtype = dtype or embed.dtype
    head = EagleHead(content.fields, embed.to(dtype), lm_head.to(dtype))
    own = head.trainable()
    missing = sorted(set(own) - set(content.tensors))
    if missing:
        raise ValueError(f"{path}: EAGLE head file lacks {missing[:4]}")
    with torch.no_grad():
        for name, p in own.items():
            t = content.tensors[name]
            if t.shape != p.shape:
                raise ValueError(
                    f"{path}: {name} has shape {tuple(t.shape)}, expected {tuple(p.shape)}"
                )
            p.copy_(t.to(p.dtype))
    head.provenance = content.provenance
    return head.eval()


__all__ = [
    "EagleHead",
    "HeadFile",
    "head_config_from_target",
    "head_for_target",
    "load_head",
    "read_head",
    "save_head",
]
