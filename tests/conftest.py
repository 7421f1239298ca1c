"""Shared fixtures. On machines without CUDA the Triton kernels run under the interpreter, which
must be switched on before any @triton.jit decorator runs, hence before samgpu.kernels is
imported."""

import os
import platform

# The interpreter's tl.dot is numpy's matmul (OpenBLAS). OpenBLAS's Haswell and Zen sgemm kernels,
# which it picks on AMD EPYC machines, give a row's dot products different bits depending on how
# many rows the call has and where the row sits (checked: a 16-row call against 2-8 rows, and the
# same row first or last); the exact-attention invariance tests read that as the kernel's fault.
# The Sandybridge kernels (AVX: any x86-64 CI machine) and SkylakeX's do not. Set before numpy
# loads, over the workplace image's OPENBLAS_CORETYPE=Haswell.
if platform.machine() in ("x86_64", "AMD64"):
    os.environ["OPENBLAS_CORETYPE"] = "Sandybridge"

import torch  # noqa: E402

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
