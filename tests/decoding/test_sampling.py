"""Sampling is lossless in distribution: with drafted trees, the first two generated tokens are
distributed exactly as direct ancestral sampling from the target, p(t1) p(t2 | t1). Checked with a
chi-square test on a 6-token toy model (tests/decoding/test_loop.py's ToyRunner), with negative
controls showing that the same test, same sample size, rejects broken acceptance rules. Plus
seeded determinism, and sampled outputs equal to `ar`'s with the same seed whatever the drafts,
batch size or batching mode (noise keyed by position, kernels/randoms.py)."""

from __future__ import annotations

import pytest
import torch

import samgpu.decoding.engine as engine
from samgpu.decoding.config import GenerationConfig
from samgpu.factory import build_decoder
from samgpu.kernels.verify import sampling_probs
from tests.decoding.test_loop import ToyRunner, reference_greedy

PROMPT = [1, 2, 3]
NUM_SAMPLES = 1500  # broken rules below get p < 1e-60 at this size
ALPHA_OK = 1e-4  # the correct rule must not be rejected at this level (seeded: deterministic)
ALPHA_BROKEN = 1e-8  # broken rules must be rejected at this level


def _decoder(runner, num_reqs, branching=True, error_rate=0.3):
    refs = [(PROMPT, reference_greedy(runner, PROMPT, 4))]
    options = dict(references=refs, depth=2, branching=branching, error_rate=error_rate)
    return build_decoder(runner, "test", batch_size=num_reqs, max_len=24, options=options)


def _expected_joint(runner, config):
    """p(t1) p(t2 | t1) under the same warpers (sampling_probs matches HF's, test_verify)."""

    def probs(seq):
        logits = runner.next_logits(seq)[None, None]
        return sampling_probs(
            logits, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p
        )[0, 0].double()

    p1 = probs(PROMPT)
    return torch.stack([p1[t] * probs(PROMPT + [t]) for t in range(runner.vocab_size)])


def chi_square_pvalue(counts: torch.Tensor, expected_p: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit; cells with expected count < 5 are pooled."""
    n = counts.sum()
    expected = expected_p.flatten() * n
    counts = counts.flatten().double()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), stat / 2.0))


def _joint_counts(runner, config, vocab):
    dec = _decoder(runner, NUM_SAMPLES)
    out = dec.generate([PROMPT] * NUM_SAMPLES, config)
    counts = torch.zeros(vocab, vocab)
    for toks in out.tokens:
        counts[toks[0], toks[1]] += 1
    return counts, out


CONFIGS = [
    pytest.param(GenerationConfig(max_new_tokens=2, temperature=0.8, seed=1), id="T0.8"),
    pytest.param(
        GenerationConfig(max_new_tokens=2, temperature=1.3, top_k=4, top_p=0.9, seed=2),
        id="T1.3-topk4-topp0.9",
    ),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_two_token_distribution_matches_direct_sampling(config):
    runner = ToyRunner(vocab_size=6, seed=7, scale=1.0)
    counts, out = _joint_counts(runner, config, 6)
    expected = _expected_joint(runner, config)
    assert chi_square_pvalue(counts, expected) > ALPHA_OK
    # drafts were accepted (the test is about tree verification, not plain sampling)
    assert sum(s.accepted_hist[1] + s.accepted_hist[2] for s in out.stats) > NUM_SAMPLES // 10


def _broken(rule):
    real = engine.verify_sample

    def verify_sample(probs, tokens, parents, num_nodes, seed, keys, positions, **kw):
        if rule == "accept-always":  # every draft child wins its parent's race
            is_child = (parents >= 0) & (torch.arange(parents.shape[1]) < num_nodes[:, None])
            rows = torch.arange(parents.shape[0])[:, None].expand_as(parents)
            probs[rows[is_child], parents[is_child].long(), tokens[is_child].long()] += 100.0
        elif rule == "key-blind":  # every request draws from the same noise
            keys = torch.zeros_like(keys)
        return real(probs, tokens, parents, num_nodes, seed, keys, positions, **kw)

    return verify_sample


@pytest.mark.parametrize("rule", ["accept-always", "key-blind"])
def test_negative_control_broken_rule_is_rejected(monkeypatch, rule):
    """The same chi-square test, same sample size, rejects a wrong acceptance rule."""
    monkeypatch.setattr(engine, "verify_sample", _broken(rule))
    runner = ToyRunner(vocab_size=6, seed=7, scale=1.0)
    config = GenerationConfig(max_new_tokens=2, temperature=0.8, seed=1)
    counts, _ = _joint_counts(runner, config, 6)
    assert chi_square_pvalue(counts, _expected_joint(runner, config)) < ALPHA_BROKEN


def test_seeded_determinism():
    """Same seed -> same tokens (also across Decoder instances); another seed -> other tokens."""
    runner = ToyRunner(vocab_size=12, seed=8, scale=1.0)
    prompts = [PROMPT, [4, 5], [6]] * 3

    def run(seed, dec=None):
        dec = dec or _decoder(runner, 9)
        cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=seed)
        return dec.generate(prompts, cfg).tokens

    dec = _decoder(runner, 9)
    first = run(123, dec)
    assert run(123, dec) == first
    assert run(123) == first
    assert run(124) != first
    assert all(len(t) == 12 for t in first)


def _sampled(runner, method, batch_size, prompts, **config):
    if method == "ar":
        dec = build_decoder(runner, "ar", batch_size=batch_size, max_len=24)
    else:
        dec = _decoder(runner, batch_size)
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, top_k=8, **config)
    return dec.generate(prompts, cfg)


def test_sampled_tokens_equal_ar_whatever_the_drafts_and_batch():
    """With one seed, drafted trees at B=9, continuous batching and adaptive speculation, and `ar`
    one prompt at a time (keys given: the prompt's index in the whole list) emit the same tokens;
    the drafts were accepted (the comparison is about verification)."""
    runner = ToyRunner(vocab_size=12, seed=8, scale=1.0)
    prompts = [PROMPT, [4, 5], [6], PROMPT] * 3
    tree = _sampled(runner, "test", 5, prompts, seed=9, continuous=True, speculation="always")
    ar = [
        _sampled(runner, "ar", 1, [p], seed=9, sample_keys=(i,)).tokens[0]
        for i, p in enumerate(prompts)
    ]
    assert tree.tokens == ar
    # keys of 64 bits (high halves, negative) reach the device whole: the same samples as ar's
    big = tuple((-1) ** i * ((i + 1) * 2**40 + 7) for i in range(len(prompts)))
    tree = _sampled(runner, "test", 5, prompts, seed=9, continuous=True, sample_keys=big)
    ar_big = [
        _sampled(runner, "ar", 1, [p], seed=9, sample_keys=(k,)).tokens[0]
        for k, p in zip(big, prompts, strict=True)
    ]
    assert tree.tokens == ar_big != ar
    assert tree.tokens[0] != tree.tokens[3]  # the same prompt under another key: other draws
    assert sum(sum(s.accepted_hist[1:]) for s in tree.stats) > 0
    static = _sampled(runner, "test", 12, prompts, seed=9, speculation="adaptive")
    assert static.tokens == ar
    assert _sampled(runner, "test", 12, prompts, seed=10).tokens != ar  # negative control
