"""Losslessness on the real default model: samgpu greedy decoding (fp32) equals transformers
`model.generate` greedy decoding token for token, whatever the drafts (error-injecting test
drafter, chains and trees), for batch 1 and a ragged batch of 3. (Plain AR through the loop is
covered on a toy model in test_loop.py; here drafts are rejected often enough that many steps
emit only the bonus, which is an AR step.)"""

from __future__ import annotations

import pytest
import torch

from samgpu.decoding.config import GenerationConfig
from samgpu.factory import build_decoder

TEXTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nName three colours of the rainbow.<|im_end|>\n<|im_start|>assistant\n",
]
MAX_NEW = 24
EOS = 2  # <|im_end|>


@pytest.fixture(scope="module")
def setup(default_model_fp32):
    from samgpu.decoding.runners import make_runner

    model, tok = default_model_fp32
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    refs = []
    with torch.no_grad():
        for p in prompts:
            out = model.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                eos_token_id=EOS,
                pad_token_id=EOS,
            )
            refs.append(out[0, len(p) :].tolist())
    return make_runner(model), prompts, refs


def test_prompts_have_different_lengths(setup):
    _, prompts, refs = setup
    assert len({len(p) for p in prompts}) == 3
    assert all(len(r) >= 8 for r in refs)  # the references are real continuations


def _decode(runner, options, prompts, max_reqs):
    dec = build_decoder(
        runner, "test", batch_size=max_reqs, max_len=64, options=options, use_cuda_graphs=False
    )
    config = GenerationConfig(max_new_tokens=MAX_NEW, eos_token_ids=(EOS,), speculation="always")
    return dec.generate(prompts, config)


@pytest.mark.parametrize(
    "batch,branching,error_rate",
    [(1, False, 0.25), (3, True, 0.25)],
    ids=["b1-chain-errors", "b3-tree-errors"],
)
def test_spec_decode_equals_hf_greedy(setup, batch, branching, error_rate):
    """The test drafter proposes the reference continuation (depth 5) with injected errors; each
    rejected draft must be replaced by the target's own argmax, so the output is the reference."""
    runner, prompts, refs = setup
    options = dict(
        references=list(zip(prompts, refs, strict=True)),
        depth=5,
        error_rate=error_rate,
        branching=branching,
        seed=11,
    )
    out = _decode(runner, options, prompts, batch)
    assert out.tokens == refs
    # some drafts were accepted, some rejected: both paths of verification ran
    assert all(1.0 < s.mat < 6.0 for s in out.stats)
