"""Ahead-of-time compilation of every Triton kernel for Hopper (sm_90), without a GPU.

The Triton interpreter accepts code the real compiler rejects (`break`, some dtype mixes), so CI
also compiles each kernel with `triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`.
Each kernel module lists its kernels in `AOT_SPECS`: one `AotSpec` per (kernel, signature,
constexprs) worth checking, i.e. every constexpr combination the runtime uses. Run as
`python -m samgpu.kernels._aot` with TRITON_INTERPRET unset; exits non-zero on any failure and
when a kernel of a module (a `@triton.jit` function named `_..._kernel`, the house naming rule;
other jit functions are device helpers compiled inside the kernels that call them) has no spec.

Each spec compiles twice: as written, and `aligned`, as the JIT specializes it at the serving
shapes: every pointer 16-byte aligned and every `stride_*` argument a multiple of 16 (hinted with
tt.divisibility, as the JIT does from the values it is called with). The two take different paths
through the compiler: only aligned loads vectorize, and only those are software-pipelined
(cp.async), so a compile without the hints shows neither (an earlier profiling note concluded
from such a compile that the tree attention's prefix loop was not pipelined; on the GPU it is).
"""

from __future__ import annotations

import importlib
import itertools
import os
import pkgutil
import sys
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AotSpec:
    kernel: object  # triton JITFunction
    signature: dict[str, str]  # argument name -> "*i32", "i32", "fp32", "constexpr", ...
    constexprs: dict[str, object] = field(default_factory=dict)
    num_warps: int = 4


def kernel_modules() -> list[str]:
    import samgpu.kernels as pkg

    return [
        f"samgpu.kernels.{m.name}"
        for m in pkgutil.iter_modules(pkg.__path__)
        if not m.name.startswith("_")
    ]


def aligned_attrs(signature: dict[str, str]) -> dict[tuple[int], list[list]]:
    """tt.divisibility=16 on the pointers and `stride_*` ints of `signature` (module doc)."""
    return {
        (i,): [["tt.divisibility", 16]]
        for i, (name, kind) in enumerate(signature.items())
        if kind.startswith("*") or (name.startswith("stride") and kind in ("i32", "i64"))
    }


def compile_spec(spec: AotSpec, aligned: bool = False):
    """Compile one kernel for sm_90 with the real compiler (raises what the compiler raises);
    `aligned`: with the JIT's alignment specialization (module doc)."""
    import triton
    from triton.backends.compiler import GPUTarget

    src = triton.compiler.ASTSource(
        fn=spec.kernel,
        signature=spec.signature,
        constexprs=spec.constexprs,
        attrs=aligned_attrs(spec.signature) if aligned else None,
    )
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": spec.num_warps}
    )


def compile_all(verbose: bool = True) -> list[str]:
    import triton

    failures: list[str] = []
    for name in kernel_modules():
        module = importlib.import_module(name)
        specs: list[AotSpec] = list(getattr(module, "AOT_SPECS", []))
        covered = {id(s.kernel) for s in specs}
        for attr, obj in vars(module).items():
            is_kernel = isinstance(obj, triton.runtime.JITFunction) and attr.endswith("_kernel")
            if is_kernel and id(obj) not in covered:
                failures.append(f"{name}.{attr}: @triton.jit kernel without an AotSpec")
        for spec, aligned in itertools.product(specs, (False, True)):
            label = f"{name}.{spec.kernel.__name__} {spec.constexprs}" + " aligned" * aligned
            start = time.perf_counter()
            try:
                compile_spec(spec, aligned)
            except Exception as exc:  # noqa: BLE001 - report every failure, then fail
                failures.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            if verbose:
                print(f"ok {time.perf_counter() - start:5.2f}s {label}")
    return failures


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter replaces @triton.jit", file=sys.stderr)
        return 2
    failures = compile_all()
    for f in failures:
        print("FAIL", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
