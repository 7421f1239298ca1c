"""Every method's greedy output equals `ar`, token for token, with the real SmolLM2 in float32, on
a repetitive summarisation prompt (automata), a code prompt (Token Recycling) and a question, in
batches of 1 and 3 (decode loop, CPU references), and so does its sampled output with the same
seed. Drafting must also help: MAT > 1 overall."""

import pytest

# Small trees: on the CPU a verify forward costs about B x N tokens, and the test only needs every
# code path (selection, fallback, merges) exercised, not the full-size trees.
OPTIONS = {
    "pld": {"max_nodes": 7},
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


def test_overlapped_refill_equals_ar(generate, chat_prompts, ar_outputs):
    """The same with the refill prefilled beside the live slot and landed a window later
    (overlapped admissions: the CUDA default from 16 slots, forced here)."""
    out = generate("merged", chat_prompts, max_reqs=2, continuous=True, overlap=True)
    assert out.tokens == ar_outputs["b3"]


STORE_METHODS = ["sam", "sam+tr", "sam-tree", "merged"]
STORE_TOKENS = 1 << 13  # 4,096 per generation: plenty for three answers, cheap on the CPU


@pytest.fixture(scope="module")
def answers_store(tmp_path_factory, runner, default_index, ar_outputs):
    """A store file holding the AR answers of the three prompts (a run that already answered
    them), stamped with the index's tokenizer fingerprint."""
    from samgpu.drafters.parts.store_file import save_store_file

    path = tmp_path_factory.mktemp("store") / "answers.samstore"
    return save_store_file(
        path,
        ar_outputs["b3"],
        vocab_size=runner.vocab_size,
        tokenizer_fingerprint=default_index.tokenizer_fingerprint,
    )


@pytest.mark.parametrize("method", STORE_METHODS)
def test_prefilled_store_equals_ar_and_drafts_from_it(method, generate, chat_prompts, ar_outputs,
                                                      answers_store):  # fmt: skip
    """Batch of 3 with a store that already holds the answers: output == ar, every request drafts
    from the store (per-request stats count those steps as "store"; longer static or dynamic
    matches still win the others), and MAT >= 2.5 with 8-node trees."""
    out = generate(
        method,
        chat_prompts,
        store=str(answers_store),
        store_tokens=STORE_TOKENS,
        **OPTIONS[method],
    )
    assert out.tokens == ar_outputs["b3"]
    assert all(s.sources.get("store", 0) > 0 for s in out.stats), out.stats
    mat = sum(s.generated for s in out.stats) / sum(s.steps for s in out.stats)
    assert mat >= 2.5, mat  # merged's chains have 4 nodes at this budget


@pytest.mark.parametrize("method", ["sam+tr", "merged"])
def test_prefilled_store_batch_of_one_equals_ar(method, generate, chat_prompts, ar_outputs,
                                                answers_store):  # fmt: skip
    out = generate(
        method,
        chat_prompts[:1],
        store=str(answers_store),
        store_tokens=STORE_TOKENS,
        **OPTIONS[method],
    )
    assert out.tokens == ar_outputs["b1"]
    assert out.stats[0].sources.get("store", 0) > 0


@pytest.mark.parametrize("method", ["sam+tr", "merged"])
def test_store_filled_during_a_continuous_run_equals_ar(method, generate, chat_prompts,
                                                        ar_outputs):  # fmt: skip
    """An empty store, three prompts through two slots with refill: the first finished answers
    are appended (finish) while the others decode and the third is admitted; output == ar."""
    prompts = chat_prompts + chat_prompts[:1]  # the summary twice: the repeat can use the store
    out = generate(
        method,
        prompts,
        max_reqs=2,
        continuous=True,
        store=True,
        store_tokens=STORE_TOKENS,
        **OPTIONS[method],
    )
    assert out.tokens == ar_outputs["b3"] + ar_outputs["b1"]


SAMPLING = {"temperature": 0.8, "top_p": 0.95, "seed": 11}


@pytest.fixture(scope="module")
def ar_samples(generate, chat_prompts):
    return generate("ar", chat_prompts, sampling=SAMPLING).tokens


@pytest.mark.parametrize("method", ["pld", "sam+tr", "merged"])  # chain, tree, merged tree
def test_sampled_output_equals_ar_with_the_same_seed(method, generate, chat_prompts, ar_samples):
    """Sampling (T 0.8, top-p 0.95, one seed): every method, through two slots with refill, emits
    the tokens `ar` samples in a batch of three (noise keyed by request and position); drafts are
    still accepted. A sample differs from the greedy output (the comparison is about sampling)."""
    out = generate(
        method, chat_prompts, max_reqs=2, continuous=True, sampling=SAMPLING, **OPTIONS[method]
    )
    assert out.tokens == ar_samples
    assert sum(s.steps for s in out.stats) < sum(len(t) for t in out.tokens)


def test_samples_differ_from_greedy_and_by_seed(generate, chat_prompts, ar_outputs, ar_samples):
    assert ar_samples != ar_outputs["b3"]
    other = generate("ar", chat_prompts, sampling=dict(SAMPLING, seed=12)).tokens
    assert other != ar_samples
