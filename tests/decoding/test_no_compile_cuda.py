"""After the set-up `samgpu generate` runs (SamDecoder.ensure_capacity: build, warm-up), a run
compiles no Triton kernel, whatever its prompts' lengths (CUDA only: nothing compiles under the
interpreter). A kernel that specializes on a value an admission or a step meets late (a pad
width, an odd chunk, a pointer's alignment) compiles mid-run, ~0.1-0.5 s each on a fresh machine,
inside the generation's time: load_rows, kv_scatter and the Token Recycling seeding did
(docs/BATCHED-RUNS.md, 2026-12-02)."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="compiles happen on a GPU only"),
]

# Prompt lengths around Triton's integer cases (1, multiples of 16) and the chunk and bucket
# edges (the TR seeding's 512-token chunks, the packed prefill's buckets), in a mixed order.
LENGTHS = [5, 1, 700, 16, 33, 2, 1100, 17, 513, 3, 64, 2100, 31, 250, 15, 96, 1, 1500, 48, 9]
MAX_NEW = 12


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    from tests.decoding.conftest import tiny_config

    config = copy.deepcopy(tiny_config("llama"))
    config.max_position_embeddings = 4096
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval().to("cuda")


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    # few distinct ids: the automata and pld match, so drafts and their kernels run
    return [torch.randint(3, 12, (n,), generator=gen).tolist() for n in LENGTHS]


def _index(vocab: int):
    from samgpu.sam import SamIndex

    gen = torch.Generator().manual_seed(4)
    corpus = torch.randint(3, 12, (4, 400), generator=gen).tolist()
    return SamIndex.build(corpus, vocab_size=vocab, eos_id=2)


@pytest.fixture(scope="module")
def head_path(model, tmp_path_factory) -> str:
    """A random EAGLE head for the model (tests/drafters/test_eagle_lossless.py's)."""
    from tests.drafters.test_eagle_lossless import new_head, write_head

    path = tmp_path_factory.mktemp("eagle") / "random.safetensors"
    return write_head(path, new_head(model), model)


METHODS = ["ar", "pld", "tr", "sam", "sam+tr", "sam-tree", "merged"]
EAGLE_METHODS = ["eagle", "sam+eagle", "merged+eagle"]


@pytest.mark.parametrize("batch_size", [4, 16])  # 16: overlapped admissions (OVERLAP_MIN_SLOTS)
@pytest.mark.parametrize("method", METHODS + EAGLE_METHODS)
def test_a_run_after_the_set_up_compiles_nothing(model, head_path, method, batch_size):
    from profiling.common import TritonCompiles
    from samgpu.api import SamDecoder

    vocab = model.config.vocab_size
    index = None if method in ("ar", "pld", "tr", "eagle") else _index(vocab)
    options = {"head": head_path} if method in EAGLE_METHODS else {}
    dec = SamDecoder(model, None, method=method, index=index, **options)
    prompts = _prompts()
    # the CLI's set-up (cli/generate.py Session.warm_up)
    dec.ensure_capacity(batch_size, dec.needed_len(max(LENGTHS), MAX_NEW))
    with TritonCompiles() as compiles:
        out = dec.generate_ids(prompts, max_new_tokens=MAX_NEW, batch_size=batch_size)
        torch.cuda.synchronize()
    assert [len(t) for t in out.tokens] == [MAX_NEW] * len(prompts)
    assert compiles.since(float("-inf")) == [], f"{method} B={batch_size} compiled mid-run"


def test_the_hook_sees_a_compile():
    """Control: a kernel launched with a value it specializes on (rms_norm at hidden 17 after
    64) is seen compiling, so the checks above would have seen one."""
    from profiling.common import TritonCompiles
    from samgpu.kernels.rms_norm import rms_norm

    rms_norm(torch.randn(3, 64, device="cuda"), torch.ones(64, device="cuda"), 1e-6)
    with TritonCompiles() as control:
        rms_norm(torch.randn(3, 17, device="cuda"), torch.ones(17, device="cuda"), 1e-6)
        torch.cuda.synchronize()
    assert control.since(float("-inf"))


def test_a_sampled_run_after_the_set_up_compiles_nothing(model):
    """The same for a sampled run (its step graphs differ from the greedy warm-up's)."""
    from profiling.common import TritonCompiles
    from samgpu.api import SamDecoder
    from samgpu.decoding.config import GenerationConfig

    dec = SamDecoder(model, None, method="pld")
    prompts = _prompts()
    sampling = GenerationConfig(max_new_tokens=MAX_NEW, temperature=0.8)
    dec.ensure_capacity(4, dec.needed_len(max(LENGTHS), MAX_NEW), sampling)  # as the CLI's set-up
    with TritonCompiles() as compiles:
        dec.generate_ids(prompts, max_new_tokens=MAX_NEW, batch_size=4, temperature=0.8, seed=1)
        torch.cuda.synchronize()
    assert compiles.since(float("-inf")) == []
