"""Exact mode end to end on CPU: the runner's invariant forward (kernels/exact_attention.py through
the Triton interpreter) drives every method, whose greedy output must equal `ar`'s token for token
(float32; the bfloat16 claim is checked on the GPU by profiling/bench_serve.py --exact), in a
ragged batch of 3 and with refills; and exact mode is refused, with the reason, for models the
fast runner does not cover."""

from __future__ import annotations

import pytest
import torch

from samgpu.decoding.config import GenerationConfig
from samgpu.decoding.runners import make_runner
from samgpu.factory import build_decoder
from tests.decoding.conftest import tiny_model

PROMPTS = [[5, 17, 3, 99, 42, 7], [1, 2], [64, 65, 66, 64, 65]]
METHODS = ["ar", "pld", "tr", "sam", "sam+tr", "sam-tree", "merged"]


@pytest.fixture(scope="module")
def exact_runner(tiny_llama):
    return make_runner(tiny_llama, exact=True)


NEW = 6


def _generate(runner, method, prompts, batch, continuous):
    options = {} if method in ("ar", "pld") else {"max_nodes": 8}
    dec = build_decoder(runner, method, batch_size=batch, max_len=64, options=options)
    config = GenerationConfig(max_new_tokens=NEW, continuous=continuous, speculation="always")
    return dec.generate(prompts, config).tokens


# (batch, continuous, methods): every method in a ragged batch; refills with a tree method. The
# interpreter runs ~0.2 s per exact-attention launch, so B=1 (the same kernel, one row) is left
# to the batch case.
CASES = [(3, False, METHODS[1:]), (2, True, ["merged"])]


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="runs the Triton kernels on CPU tensors through the interpreter, which conftest turns "
    "on only without CUDA (on a GPU: profiling/bench_serve.py --exact)",
)
@pytest.mark.parametrize("batch,continuous,methods", CASES, ids=["b3-static", "b2-continuous"])
def test_every_method_equals_ar_in_exact_mode(
    monkeypatch, exact_runner, batch, continuous, methods
):
    # the exact attention kernels themselves (interpreter), not their CPU references
    from samgpu.decoding.runners import llama
    from samgpu.kernels import exact_attention as ea

    monkeypatch.setattr(llama, "exact_attention", ea.exact_attention_triton)
    monkeypatch.setattr(llama, "exact_prefill_attention", ea.exact_prefill_attention_triton)
    want = _generate(exact_runner, "ar", PROMPTS, batch, continuous)
    assert all(len(t) == NEW for t in want)
    for method in methods:
        assert _generate(exact_runner, method, PROMPTS, batch, continuous) == want, method


def test_exact_mode_is_refused_for_models_outside_the_fast_runner():
    with pytest.raises(ValueError, match="exact mode is not available for this model"):
        make_runner(tiny_model("gpt2"), exact=True)
    with pytest.raises(ValueError, match="prefer='generic'"):
        make_runner(tiny_model("llama"), prefer="generic", exact=True)
    assert make_runner(tiny_model("llama"), exact=True).exact  # control: Llama is covered


def test_exact_runner_agrees_with_the_fast_one(tiny_llama, exact_runner):
    """The exact forward computes the same function (fp32 tolerances): a prefill and a verify
    step give the same logits as the fast runner's within rounding."""
    fast = make_runner(tiny_llama)
    ids = torch.tensor([PROMPTS[0]], dtype=torch.int32)
    outs = []
    for runner in (fast, exact_runner):
        cache = runner.allocate_cache(1, 32)
        runner.prefill(ids[:, :-1], torch.tensor([5], dtype=torch.int32), cache)
        tokens = ids[:, -1:].contiguous()
        positions = torch.tensor([[5]], dtype=torch.int32)
        mask = torch.ones(1, 1, 1, dtype=torch.bool)
        out = torch.zeros(1, 1, runner.vocab_size)
        runner.forward_tree(tokens, positions, mask, cache, out)
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
