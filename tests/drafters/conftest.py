"""Fixtures for the drafters' end-to-end tests: the default SmolLM2 in float32 (the idea of
tests/decoding's `default_model_fp32`, kept local so the two test folders stay independent), its
embedded default static index, and the autoregressive reference outputs (computed once)."""

import pytest
import torch

SUMMARY_TEXT = (
    "The city council met on Monday to discuss the new park. The new park will have a playground, "
    "a pond and a garden. The council said the new park will open in June. Residents asked whether "
    "the new park will have parking. The council said the new park will have parking for fifty "
    "cars. The new park will cost two million dollars."
)
CODE_PROMPT = "Write a Python function that returns the list of prime numbers below n."
QUESTION = "What is the capital of France? Answer in one sentence."
MAX_NEW = 24


@pytest.fixture(scope="session")
def default_model_fp32():
    from samgpu.models import load_default

    return load_default("cpu", torch.float32)


@pytest.fixture(scope="session")
def default_index(default_model_fp32):
    from samgpu.sam import SamIndex, build_default_index

    _, tokenizer = default_model_fp32
    return SamIndex.load(build_default_index(tokenizer, progress=False))


@pytest.fixture(scope="session")
def chat_prompts(default_model_fp32):
    """[summarise (repetitive), code, question] as chat-templated token ids."""
    _, tok = default_model_fp32
    texts = [f"Summarize this text:\n{SUMMARY_TEXT}", CODE_PROMPT, QUESTION]
    chats = [
        tok.apply_chat_template(
            [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False
        )
        for t in texts
    ]
    return [list(tok(c, add_special_tokens=False).input_ids) for c in chats]


@pytest.fixture(scope="session")
def runner(default_model_fp32):
    from samgpu.decoding.runners import make_runner

    return make_runner(default_model_fp32[0])


@pytest.fixture(scope="session")
def generate(runner, default_index):
    """generate(method, prompts, **options) -> GenerationOutput, max_new_tokens = MAX_NEW."""
    import dataclasses

    from samgpu.decoding.config import GenerationConfig
    from samgpu.drafters import get_method
    from samgpu.factory import build_decoder
    from samgpu.models import default_eos_ids

    def run(
        method, prompts, *, max_reqs=None, continuous=False, overlap=None, sampling=(), **options
    ):
        max_len = max(len(p) for p in prompts) + MAX_NEW + 128
        max_reqs = max_reqs or len(prompts)
        # the method's full default tree, not the small CPU budget: the strongest lossless check
        fields = {f.name: f.default for f in dataclasses.fields(get_method(method).options)}
        if "max_nodes" in fields and fields["max_nodes"] is not None:
            options.setdefault("max_nodes", fields["max_nodes"])
        decoder = build_decoder(
            runner,
            method,
            batch_size=max_reqs,
            max_len=max_len,
            index=default_index,
            options=options,
        )
        config = GenerationConfig(
            max_new_tokens=MAX_NEW,
            eos_token_ids=default_eos_ids(),
            continuous=continuous,
            overlap_admissions=overlap,
            check_every=4,
            speculation="always",  # the drafters under test draft every step
            **dict(sampling),  # temperature, top_p, seed
        )
        return decoder.generate(prompts, config)

    return run


@pytest.fixture(scope="session")
def ar_outputs(generate, chat_prompts):
    """Autoregressive reference tokens: {"b1": [summary], "b3": [summary, code, question]}."""
    return {
        "b1": generate("ar", chat_prompts[:1]).tokens,
        "b3": generate("ar", chat_prompts).tokens,
    }
