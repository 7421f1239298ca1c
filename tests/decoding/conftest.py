"""Session fixtures for runner tests: the real default model (loaded once) and tiny random models.

Tiny configs keep the real models' structure at toy sizes (real sizes in the comments)."""

import pytest
import torch

TINY_VOCAB = 128


def tiny_config(kind: str):
    """A 2-layer random model of the given family: hidden 64, GQA 4 q heads on 2 kv heads."""
    from transformers import (
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
        Qwen3Config,
    )

    common = dict(
        vocab_size=TINY_VOCAB,  # SmolLM2 49152, Llama-3 128256
        hidden_size=64,  # SmolLM2-135M 576, Llama-2-7B 4096
        intermediate_size=128,  # 1536, 11008
        num_hidden_layers=2,  # 30, 32
        num_attention_heads=4,  # 9, 32
        num_key_value_heads=2,  # 3, 32 (Llama-3-8B: 8)
        max_position_embeddings=256,
    )
    if kind == "llama":  # SmolLM2-like: tied embeddings, default RoPE
        return LlamaConfig(**common, tie_word_embeddings=True, rope_theta=100000.0)
    if kind == "llama3":  # Llama-3.1-like: llama3 RoPE scaling, untied, head_dim != hidden/heads
        rope = dict(
            rope_type="llama3",
            rope_theta=500000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        )
        return LlamaConfig(**common, head_dim=32, tie_word_embeddings=False, rope_parameters=rope)
    if kind == "qwen2":  # q/k/v biases
        return Qwen2Config(**common, tie_word_embeddings=False)
    if kind == "qwen3":  # per-head q/k RMSNorm, explicit head_dim
        return Qwen3Config(**common, head_dim=16, tie_word_embeddings=True)
    if kind == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if kind == "gpt2":  # not Llama-family: generic runner
        return GPT2Config(vocab_size=TINY_VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind), dtype=torch.float32)
    # Random init leaves biases at zero: make them matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def default_model_fp32():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, fp32 on CPU, loaded once."""
    from samgpu.models import load_default

    return load_default(device="cpu", dtype=torch.float32)
