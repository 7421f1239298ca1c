"""The factory's memory plan counts what a method allocates: an EAGLE method's own one-layer
cache and the prompts' hidden states, which `ar` does not have."""

from types import SimpleNamespace

import torch

from samgpu.factory import memory_estimate


def test_eagle_methods_count_the_heads_cache():
    runner = SimpleNamespace(
        num_layers=30, num_kv_heads=3, head_dim=64, hidden_size=576, dtype=torch.bfloat16,
        logits_dtype=torch.bfloat16, vocab_size=49152, device=torch.device("cuda"),
    )  # fmt: skip
    ar = memory_estimate(runner, "ar", 8, 1024)
    eagle = memory_estimate(runner, "eagle", 8, 1024)
    assert "drafter_cache" not in ar and "prompt_hidden" not in ar
    assert eagle["drafter_cache"] * 30 == eagle["kv_cache"]  # one layer of thirty
    assert eagle["prompt_hidden"] == 576 * 2 * 8 * 1024
    merged = memory_estimate(runner, "merged+eagle", 8, 1024)
    assert merged["drafter_cache"] == eagle["drafter_cache"] and "dynamic_automata" in merged
