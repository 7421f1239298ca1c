"""The import layering of docs/ARCHITECTURE.md, enforced on the source:

    kernels (+ their types) <- automata, index <- drafters, runners <- engine <- scheduler
        <- factory <- API (api, resolve, io, ...) <- CLI;   profiling on top, never imported.

- kernels import only torch, triton and samgpu.kernels.* (their own types and helpers);
- the automaton index (samgpu/sam) knows nothing of models, GPUs' runtime or drafters;
- every samgpu module imports only modules of its own layer or below (function-level imports
  included), so there are no circles between layers, and none within the package at all;
- no module under samgpu/ (or kernels/) imports `profiling`;
- no import of a private name (`_x`) from another module, nor of a private module from outside its
  package (samgpu/, kernels/ and profiling/);
- only the runtime (decoding, drafters, models, api, resolve, cli) touches transformers;
- modules stay under 500 lines (kernel files, with their references and AOT specs, under 600).
Each rule has a negative control on a planted source string."""

import ast
import pathlib
import sys
from itertools import pairwise

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)

# Layers, lowest first: a module may import its own layer and the layers below.
LAYERS: list[tuple[str, ...]] = [
    ("samgpu.kernels", "samgpu.types", "samgpu.errors", "samgpu.files"),
    ("samgpu.sam", "samgpu.automata"),
    ("samgpu.drafters", "samgpu.decoding.runners", "samgpu.decoding.config"),
    ("samgpu.decoding.stages", "samgpu.decoding.buffers", "samgpu.decoding.adaptive")
    + ("samgpu.decoding.prefill_plan", "samgpu.decoding.streams"),
    ("samgpu.decoding.prefill",),
    ("samgpu.decoding.engine",),
    ("samgpu.decoding.scheduler",),
    ("samgpu.factory",),
    ("samgpu.api", "samgpu.resolve", "samgpu.hf_args", "samgpu.models", "samgpu.io")
    + ("samgpu.inputs", "samgpu.completions", "samgpu.eagle", "samgpu.oneshot"),
    ("samgpu.distributed",),
    ("samgpu.cli", "samgpu.__main__"),
]
UNLAYERED = {"samgpu", "samgpu.decoding"}  # package __init__ files that import nothing heavy


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "kernels":
        rel = pathlib.Path("samgpu", *rel.parts)
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, name: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement, function-level ones included;
    relative imports resolved against `name`."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, mod] if mod else base)
            names = [a.name for a in node.names]
            subs = [n for n in names if is_module(f"{mod}.{n}")]  # `from samgpu import files`
            out += [(f"{mod}.{n}", []) for n in subs]
            if len(subs) < len(names):
                out.append((mod, [n for n in names if n not in subs]))
    return out


def sources(*folders: str) -> list[tuple[str, pathlib.Path, str]]:
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.append((module_name(path), path, path.read_text()))
    return found


def layer_of(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in layer):
            return i
    return None


def layer_violations(name: str, source: str, is_package: bool) -> list[str]:
    mine = layer_of(name)
    if mine is None:
        return [] if name in UNLAYERED else [f"{name}: in no layer (add it to LAYERS)"]
    bad = []
    for mod, _ in imports(source, name, is_package):
        if not mod.startswith("samgpu"):
            continue
        theirs = layer_of(mod)
        if theirs is None and mod not in UNLAYERED:
            bad.append(f"{name} imports unlayered {mod}")
        elif theirs is not None and theirs > mine:
            bad.append(f"{name} (layer {mine}) imports {mod} (layer {theirs})")
    return bad


def is_module(module: str) -> bool:
    parts = module.split(".")
    if parts[:2] == ["samgpu", "kernels"]:
        parts = ["kernels", *parts[2:]]
    path = ROOT.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_violations(name: str, source: str, is_package: bool) -> list[str]:
    bad = []
    package = name if is_package else name.rpartition(".")[0]
    for mod, names in imports(source, name, is_package):
        if not (mod.startswith("samgpu") or mod.startswith("profiling")):
            continue
        for n in names:
            if n.startswith("_") and not n.startswith("__"):
                own_module = package == mod and is_module(f"{mod}.{n}")  # a sibling _module
                if not own_module:
                    bad.append(f"{name}: from {mod} import {n}")
        parts = mod.split(".")
        for i, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__"):
                owner = ".".join(parts[:i])
                if not (package == owner or package.startswith(owner + ".")):
                    bad.append(f"{name}: imports private module {mod}")
    return bad


def samgpu_sources():
    return [
        (n, p, s) for n, p, s in sources("samgpu", "kernels") if not p.name.startswith("__main")
    ] + [(n, p, s) for n, p, s in sources("samgpu") if p.name == "__main__.py"]


def test_every_module_imports_only_its_layer_and_below():
    bad = []
    for name, path, source in samgpu_sources():
        bad += layer_violations(name, source, path.name == "__init__.py")
    assert bad == []


def test_layer_rule_catches_an_upward_import():
    """Negative control: the engine importing the scheduler, drafters importing the factory."""
    planted = "from samgpu.decoding.scheduler import Scheduler\n"
    assert layer_violations("samgpu.decoding.engine", planted, False)
    planted = "def f():\n    from samgpu.factory import build_decoder\n"
    assert layer_violations("samgpu.drafters.sam", planted, False)
    assert not layer_violations("samgpu.api", "from samgpu.factory import build_decoder\n", False)
    # a submodule imported from its package is that submodule's import
    assert layer_violations("samgpu.kernels.verify", "from samgpu import api\n", False)
    assert not layer_violations("samgpu.sam.storage", "from samgpu import files\n", False)


def test_no_import_circles_within_samgpu():
    graph: dict[str, set[str]] = {}
    for name, path, source in samgpu_sources():
        deps = set()
        for mod, names in imports(source, name, path.name == "__init__.py"):
            subs = {f"{mod}.{n}" for n in names if is_module(f"{mod}.{n}")}
            deps |= subs or {mod}  # `from pkg import module` depends on the module
        graph[name] = {m for m in deps if m.startswith("samgpu") and m != name}
    known = set(graph)

    def resolve(mod: str) -> str | None:  # `samgpu.x.y.Name` style imports -> the module
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        return mod or None

    edges = {
        a: {r for m in deps if (r := resolve(m)) and r != a and not a.startswith(r + ".")}
        for a, deps in graph.items()
    }
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    # a package __init__ that re-exports its submodules is part of them, not a circle
    real = [c for c in cycles if not any(b.startswith(a + ".") for a, b in pairwise(c))]
    assert real == []


def test_samgpu_never_imports_profiling():
    bad = [
        f"{name}: {mod}"
        for name, path, source in samgpu_sources()
        for mod, _ in imports(source, name, path.name == "__init__.py")
        if mod.split(".")[0] == "profiling"
    ]
    assert bad == []


def test_no_private_names_across_modules():
    bad = []
    for name, path, source in samgpu_sources() + sources("profiling"):
        bad += private_violations(name, source, path.name == "__init__.py")
    assert bad == []


def test_private_rule_catches_private_imports():
    """Negative controls: a private name from another module, a private module from outside."""
    assert private_violations("samgpu.cli.file", "from samgpu.cli import _error\n", False)
    planted = "from samgpu.kernels._dispatch import use_triton\n"
    assert private_violations("samgpu.decoding.engine", planted, False)
    assert not private_violations("samgpu.kernels.tree", planted, False)


def test_kernels_import_only_torch_and_triton():
    bad = []
    for name, path, source in sources("kernels"):
        for mod, _ in imports(source, name, path.name == "__init__.py"):
            root = mod.split(".")[0]
            if root in STDLIB or root in {"torch", "triton"} or mod.startswith("samgpu.kernels"):
                continue
            bad.append(f"{name}: {mod}")
    assert bad == []


def test_index_knows_nothing_of_models():
    allowed = {"numpy", "numba", "torch", "tqdm"}
    bad = []
    for name, path, source in sources("samgpu/sam"):
        for mod, _ in imports(source, name, path.name == "__init__.py"):
            root = mod.split(".")[0]
            if root in STDLIB or root in allowed or mod.startswith("samgpu.sam"):
                continue
            if mod in ("samgpu.errors", "samgpu.types", "samgpu.kernels.types", "samgpu.files"):
                continue
            bad.append(f"{name}: {mod}")
    assert bad == []


def test_only_runtime_touches_transformers():
    runtime = ("samgpu.decoding", "samgpu.drafters", "samgpu.models", "samgpu.api")
    runtime += ("samgpu.resolve", "samgpu.cli")
    bad = [
        name
        for name, path, source in samgpu_sources()
        if not name.startswith(runtime)
        and any(m.split(".")[0] == "transformers" for m, _ in imports(source, name, False))
    ]
    assert bad == []


@pytest.mark.parametrize("folder,limit", [("samgpu", 500), ("kernels", 600)])
def test_no_long_files(folder, limit):
    """Python modules stay under 500 lines; kernel files (a kernel family with its reference,
    launchers and AOT specs) under STYLE.md's ~600."""
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in sorted((ROOT / folder).rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > limit
    ]
    assert long == []


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
