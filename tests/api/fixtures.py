"""Fixtures for the API and CLI tests: a tiny random Llama saved as a transformers checkpoint with
the default model's tokenizer (so string prompts, chat templates and stop strings work) and a short
context (so over-long prompts are easy to make). tests/api/conftest.py and tests/test_cli*.py
import them from here."""

import json

import pytest
import torch

TINY_CONTEXT = 96


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from samgpu.models import load_default_tokenizer

    tok = load_default_tokenizer()
    # SmolLM2-135M is hidden 576, 30 layers, 9 heads / 3 KV heads; this keeps its vocabulary only.
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        bos_token_id=1,
        pad_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def prompts_file(tmp_path):
    def make(records, name="in.jsonl"):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return path

    return make
