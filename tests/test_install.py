"""After the README's install (`pip install -e .`), both `pytest` and `python -m pytest` import the
package and its kernels: the rootdir does not shadow `samgpu.kernels`, and no top-level `kernels`
module leaks from the repository."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("runner", ["pytest", "python -m pytest"])
def test_both_pytest_entry_points_collect(runner):
    cmd = [sys.executable, "-m", "pytest"]
    if runner == "pytest":
        cmd = [shutil.which("pytest") or "pytest"]
    proc = subprocess.run(
        [*cmd, "-q", "-p", "no:cacheprovider", "tests/test_layering.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout
