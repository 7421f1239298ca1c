"""DESIGN.md §2 layering: kernels import only torch/triton; the automaton index knows nothing of
models or GPUs; only the runtime (decoding/, models, api, cli, drafters) touches transformers."""

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module)
    return roots


def offending(folder: str, allowed) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for mod in imported_roots(path):
            if mod.split(".")[0] not in STDLIB and not allowed(mod):
                bad.append(f"{path.relative_to(ROOT)}: {mod}")
    return bad


def test_kernels_import_only_torch_and_triton():
    allowed = lambda m: m.split(".")[0] in {"torch", "triton"} or m.startswith("samgpu.kernels")
    assert offending("kernels", allowed) == []


def test_index_knows_nothing_of_models():
    allowed = lambda m: (
        m.split(".")[0] in {"numpy", "numba", "torch", "tqdm"} or m.startswith("samgpu.sam")
    )
    assert offending("samgpu/sam", allowed) == []


def test_only_runtime_touches_transformers():
    runtime = {"decoding", "drafters", "models.py", "api.py", "resolve.py", "cli.py", "bench"}
    bad = []
    for path in sorted((ROOT / "samgpu").rglob("*.py")):
        rel = path.relative_to(ROOT / "samgpu")
        if rel.parts[0] in runtime:
            continue
        bad += [f"{rel}: {m}" for m in imported_roots(path) if m.split(".")[0] == "transformers"]
    assert bad == []


def test_kernels_folder_does_not_pose_as_hf_kernels_package():
    """Run from the repository root (as `python -m pytest` does, putting it on sys.path):
    transformers' probe for Hugging Face's `kernels` package must not take our folder for it, and
    the Triton code resolves as `samgpu.kernels` from kernels/."""
    import subprocess

    code = (
        "import samgpu.kernels as k, pathlib;"
        "print(pathlib.Path(k.__file__).parent);"
        "from transformers.utils.import_utils import is_kernels_available;"
        "print(is_kernels_available())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    folder, hf_kernels = proc.stdout.split()[-2:]
    assert pathlib.Path(folder) == ROOT / "kernels"
    assert hf_kernels == "False"
