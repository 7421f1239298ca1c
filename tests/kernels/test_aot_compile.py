"""Every Triton kernel compiles for sm_90 ahead of time, on the CPU, with the real compiler: the
interpreter that runs the kernel tests accepts code the compiler rejects (`break`, ...)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def compiler_run(*args: str, timeout: int | None = None) -> subprocess.CompletedProcess:
    """`python *args` with the real compiler (TRITON_INTERPRET unset: it replaces @triton.jit)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def compile_in_module(tmp_path, name: str, source: str, code: str) -> subprocess.CompletedProcess:
    """`code` run with the real compiler after importing `source` as module `name`."""
    (tmp_path / f"{name}.py").write_text(source)
    prelude = f"import sys; sys.path.insert(0, sys.argv[1]); import {name};"
    return compiler_run("-c", prelude + code, str(tmp_path))


def test_every_kernel_compiles_for_sm90():
    proc = compiler_run("-m", "samgpu.kernels._aot", timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr


BROKEN_KERNEL = """
import triton
import triton.language as tl


@triton.jit
def _broken_kernel(x_ptr, n):
    i = 0
    while i < n:
        if tl.load(x_ptr + i) == 0:
            break  # the interpreter runs this; the compiler rejects it
        i += 1
"""


def test_the_check_rejects_what_only_the_interpreter_accepts(tmp_path):
    """Negative control: a kernel with `break` must fail the AOT compile."""
    code = (
        "from samgpu.kernels._aot import AotSpec, compile_spec;"
        "compile_spec(AotSpec(broken_mod._broken_kernel, {'x_ptr': '*i32', 'n': 'i32'}))"
    )
    proc = compile_in_module(tmp_path, "broken_mod", BROKEN_KERNEL, code)
    assert proc.returncode != 0
    assert "break" in proc.stderr.lower() or "unsupported" in proc.stderr.lower(), proc.stderr


COPY_KERNEL = """
import triton
import triton.language as tl


@triton.jit
def _copy_rows_kernel(x_ptr, y_ptr, stride_x, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + row * stride_x + offs, tl.load(x_ptr + row * stride_x + offs))
"""


def test_the_aligned_compile_is_the_one_that_vectorizes(tmp_path):
    """The aligned variant carries the JIT's specialization (16-byte pointers, strides multiple of
    16): its loads vectorize; the plain compile of the same kernel (the control) does not."""
    code = (
        "from samgpu.kernels._aot import AotSpec, compile_spec;"
        "sig = {'x_ptr': '*bf16', 'y_ptr': '*bf16', 'stride_x': 'i32', 'BLOCK': 'constexpr'};"
        "spec = AotSpec(copy_mod._copy_rows_kernel, sig, {'BLOCK': 1024});"
        "print([compile_spec(spec, a).asm['ptx'].count('ld.global.v4') for a in (False, True)])"
    )
    proc = compile_in_module(tmp_path, "copy_mod", COPY_KERNEL, code)
    assert proc.returncode == 0, proc.stderr
    plain, aligned = eval(proc.stdout.strip().splitlines()[-1])
    assert plain == 0 and aligned > 0, proc.stdout
