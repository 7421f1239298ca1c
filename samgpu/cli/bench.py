"""`samgpu bench [--out DIR] ARGS` = `python -m profiling.bench_e2e ARGS` from a source checkout.

The benchmarks live in the repository's profiling/ folder, which is not installed with the package
and which samgpu never imports: from an editable install the benchmark runs in a child process
with the checkout on PYTHONPATH (relative paths in ARGS keep meaning the caller's folder); from a
wheel install the command says how to get a checkout. Results go to `--out DIR` (default: the
current folder), not into the checkout: the child gets SAMGPU_RESULTS_DIR, which
profiling.common.results_path honours.
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


def _split_out(argv: list[str]) -> tuple[str, list[str]]:
    """(--out DIR or the current folder, the other arguments)."""
    rest, out = [], os.getcwd()
    it = iter(argv)
    for arg in it:
        if arg == "--out":
            out = next(it, "")
        elif arg.startswith("--out="):
            out = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return out, rest


def run_bench(argv: list[str]) -> int:
    out, argv = _split_out(argv)
    if not out or (Path(out).exists() and not Path(out).is_dir()):
        error(f"samgpu bench --out {out!r}: give a folder for the results")
        return EXIT_USAGE
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
    env["SAMGPU_RESULTS_DIR"] = str(Path(out).absolute())
    if "-h" not in argv and "--help" not in argv:
        print(f"samgpu bench: results go to {env['SAMGPU_RESULTS_DIR']}", file=sys.stderr)
    else:  # (--out is samgpu bench's own: the benchmark's help below does not list it)
        print("samgpu bench [--out DIR] ARGS: --out DIR, the results folder (default: the current")
        print("folder); ARGS are profiling.bench_e2e's:\n", flush=True)
    cmd = [sys.executable, "-m", "profiling.bench_e2e", *argv]
    return subprocess.run(cmd, env=env).returncode
