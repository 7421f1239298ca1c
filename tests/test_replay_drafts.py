"""profiling/replay_drafts.py: a ReplayRunner over a model's recorded greedy outputs must give the
decoder the same verification outcomes as the model itself, so a drafting study on the CPU
measures the MAT the method gets with the model (here a toy model, tests/decoding/test_loop.py)."""

from __future__ import annotations

import pytest

from profiling.replay_drafts import ReplayRunner
from samgpu.decoding.config import GenerationConfig
from samgpu.factory import build_decoder
from tests.decoding.test_loop import ToyRunner, reference_greedy

PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8], [5, 3, 5, 8, 9, 7, 9, 3, 2], [4, 4, 4]]
EOS = 11


def _generate(runner, prompts, method="pld", batch_size=2, max_new=24):
    dec = build_decoder(runner, method, batch_size=batch_size, max_len=64, use_cuda_graphs=False)
    cfg = GenerationConfig(max_new_tokens=max_new, eos_token_ids=(EOS,), speculation="always")
    return dec.generate(prompts, cfg)


def test_replay_reproduces_outputs_and_mat_of_the_model():
    """`pld` drafts from the sequence's own text; with continuous refills over 2 slots, the
    replayed decode yields the toy's outputs with the same steps per request."""
    toy = ToyRunner(seed=3)
    recorded = [(p, reference_greedy(toy, p, 24, eos=(EOS,))) for p in PROMPTS]
    real = _generate(toy, PROMPTS)
    assert real.tokens == [o for _, o in recorded]
    replay = ReplayRunner(recorded, vocab_size=toy.vocab_size, eos=EOS)
    out = _generate(replay, PROMPTS)
    assert out.tokens == real.tokens
    assert [s.steps for s in out.stats] == [s.steps for s in real.stats]
    assert sum(s.steps for s in out.stats) < sum(len(o) for _, o in recorded)  # drafts accepted


def test_replay_of_a_changed_recording_gives_the_changed_outputs():
    """Negative control: the replay follows the recording, not the toy (a changed token in the
    recording shows up in the output)."""
    toy = ToyRunner(seed=3)
    recorded = [(p, reference_greedy(toy, p, 24, eos=(EOS,))) for p in PROMPTS]
    changed = [(p, list(o)) for p, o in recorded]
    changed[1][1][5] = (changed[1][1][5] + 1) % EOS
    out = _generate(ReplayRunner(changed, vocab_size=toy.vocab_size, eos=EOS), PROMPTS)
    assert out.tokens[1][:6] == changed[1][1][:6] != recorded[1][1][:6]


def test_replay_refuses_a_one_token_prompt():
    """Its request number lives at cache position 0, which a one-token prompt's prefill (of
    prompt[:-1]) never writes: refused rather than replaying another request's output."""
    with pytest.raises(ValueError, match="2 tokens or more"):
        ReplayRunner([([3, 1], [2, EOS]), ([5], [EOS])], vocab_size=12, eos=EOS)
