"""Shared fixtures. On machines without CUDA the Triton kernels run under the interpreter, which
must be switched on before any @triton.jit decorator runs, hence before samgpu.kernels is
imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(scope="session")
def tiny_llama():
    """2-layer random SmolLM2-shaped Llama (fp32, CPU); tests/decoding/conftest.py has the
    configs. Here so that every test folder sees it (tests/test_no_sync.py on a GPU)."""
    from tests.decoding.conftest import tiny_model

    return tiny_model("llama")
