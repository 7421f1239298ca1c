"""Every method's greedy output equals `ar`, token for token, with the real SmolLM2 in float32, on
a repetitive summarisation prompt (automata), a code prompt (Token Recycling) and a question, in
batches of 1 and 3 (decode loop, CPU references). Drafting must also help: MAT > 1 overall."""

import pytest

# Small trees: on the CPU a verify forward costs about B x N tokens, and the test only needs every
# code path (selection, fallback, merges) exercised, not the full-size trees.
OPTIONS = {
    "pld": {"num_draft": 6},
    "tr": {"max_nodes": 8},
    "sam": {"max_nodes": 8},
    "sam+tr": {"max_nodes": 8},
    "sam-tree": {"max_nodes": 8, "with_tr": True},
    "merged": {"max_nodes": 8},
}


@pytest.mark.parametrize("method", list(OPTIONS))
def test_batch_of_three_equals_ar(method, generate, chat_prompts, ar_outputs):
    out = generate(method, chat_prompts, **OPTIONS[method])
    assert out.tokens == ar_outputs["b3"]
    steps = sum(s.steps for s in out.stats)
    generated = sum(len(t) for t in out.tokens)
    assert steps < generated, f"{method}: {steps} steps for {generated} tokens"


@pytest.mark.parametrize("method", ["sam+tr", "merged"])
def test_batch_of_one_equals_ar(method, generate, chat_prompts, ar_outputs):
    out = generate(method, chat_prompts[:1], **OPTIONS[method])
    assert out.tokens == ar_outputs["b1"]


@pytest.mark.parametrize("method", list(OPTIONS))
def test_continuous_batching_equals_ar(method, generate, chat_prompts, ar_outputs):
    """Three prompts through two slots with refill (continuous batching): the third prompt goes
    into whichever slot finishes first, mid-run, with its automata / Token Recycling seeds set up
    for that slot alone."""
    out = generate(method, chat_prompts, max_reqs=2, continuous=True, **OPTIONS[method])
    assert out.tokens == ar_outputs["b3"]
    assert sum(s.steps for s in out.stats) < sum(len(t) for t in out.tokens)
