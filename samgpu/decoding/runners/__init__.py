"""Model runners: the target model's forward over prompts (prefill) and over draft trees (verify),
on a static KV cache. Contract in `base` (and docs/ARCHITECTURE.md "Runner"); `make_runner` picks
the fast Llama-family runner where the model allows it, else the generic transformers runner."""

from __future__ import annotations

import warnings

import torch

from samgpu.decoding.runners.base import KVCache, Runner, RunnerBase
from samgpu.kernels.tree_attention_config import untuned_note

PREFER_CHOICES = ("auto", "fast", "generic")


def make_runner(model, *, prefer: str = "auto", exact: bool = False) -> Runner:
    """The fast Llama-family runner where `model` allows it, else the generic transformers runner.

    prefer: "auto" (fast if supported, else generic with a warning), "fast" (ValueError naming the
    reason if unsupported), "generic" (always the transformers path, no warning). exact: the
    batch- and tree-invariant forward (exact mode); only the fast runner has it, so it is a
    ValueError naming the reason for any other model. On a GPU whose tuning table has nothing for
    the model's heads, the fast runner warns once that its tree attention runs a heuristic
    configuration, and how to tune it.
    """
    from samgpu.decoding.runners.generic import GenericRunner
    from samgpu.decoding.runners.llama import LlamaRunner

    if prefer not in PREFER_CHOICES:
        raise ValueError(f"make_runner: prefer={prefer!r}, expected one of {PREFER_CHOICES}")
    reason = "prefer='generic'" if prefer == "generic" else LlamaRunner.unsupported_reason(model)
    if exact and reason is not None:
        raise ValueError(
            f"exact mode is not available for this model ({reason}): it needs samgpu's own "
            "Llama-family runner (Llama, Mistral, Qwen2, Qwen3, SmolLM2)"
        )
    if prefer == "generic":
        return GenericRunner(model)
    if reason is None:
        runner = LlamaRunner(model, exact=exact)
        if runner.device.type == "cuda" and not exact:  # (exact mode's attention is not tuned)
            card = torch.cuda.get_device_name(runner.device)
            heads = (runner.num_heads, runner.num_kv_heads, runner.head_dim)
            if (note := untuned_note(card, *heads)) is not None:
                warnings.warn(note, stacklevel=2)
        return runner
    if prefer == "fast":
        raise ValueError(f"make_runner: the fast runner does not support this model: {reason}")
    msg = (
        f"samgpu: {type(model).__name__} runs on the generic transformers runner ({reason}): "
        "correct but slower, without Triton tree attention or CUDA graphs"
    )
    warnings.warn(msg, stacklevel=2)
    return GenericRunner(model)


__all__ = ["PREFER_CHOICES", "KVCache", "Runner", "RunnerBase", "make_runner"]
