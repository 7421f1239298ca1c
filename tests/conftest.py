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
