"""`samgpu bench ARGS` = `python -m profiling.bench_e2e ARGS` from a source checkout.

The benchmarks live in the repository's profiling/ folder, which is not installed with the package
and which samgpu never imports: from an editable install the benchmark runs in a child process
with the checkout on PYTHONPATH (relative paths in ARGS keep meaning the caller's folder); from a
wheel install the command says how to get a checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from samgpu.cli.output import error
from samgpu.errors import EXIT_USAGE


def checkout_root() -> Path | None:
    """The source checkout this samgpu runs from (an editable install), or None."""
    import samgpu

    root = Path(samgpu.__file__).resolve().parents[1]
    return root if (root / "profiling" / "bench_e2e.py").is_file() else None


def run_bench(argv: list[str]) -> int:
    root = checkout_root()
    if root is None:
        error(
            "`samgpu bench` runs the repository's profiling/bench_e2e.py, which is not installed"
            " with the package: clone the samgpu repository, `pip install -e .` there, and run it"
            " again (or `python -m profiling.bench_e2e` from the checkout)"
        )
        return EXIT_USAGE
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "profiling.bench_e2e", *argv]
    return subprocess.run(cmd, env=env).returncode
