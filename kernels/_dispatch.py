"""Backend choice for every kernel family, in one place.

`use_triton(t)` is True for CUDA tensors when triton is importable; CPU tensors take the PyTorch
references (fast enough for CPU inference of small models, and the spec the kernels are tested
against). `SAMGPU_BACKEND=ref` forces the references everywhere (debugging);
`SAMGPU_BACKEND=triton` forces the Triton kernels, which on CPU needs the interpreter
(`TRITON_INTERPRET=1`, how CI runs them).
Tests call `<op>_triton` and `<op>_ref` explicitly and do not depend on this choice.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(t: torch.Tensor) -> bool:
    backend = os.environ.get("SAMGPU_BACKEND", "auto")
    if backend == "ref":
        return False
    if backend not in ("auto", "triton"):
        raise ValueError(f"SAMGPU_BACKEND={backend!r}: expected 'auto', 'triton' or 'ref'")
    if not has_triton():
        return False
    if backend == "triton":
        return t.is_cuda or interpreting()
    return t.is_cuda


def debug_checks() -> bool:
    """Value-range checks that need a host sync run only under SAMGPU_DEBUG=1."""
    return os.environ.get("SAMGPU_DEBUG", "0") == "1"
