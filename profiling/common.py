"""Shared benchmark helpers: timing with quantiles, the environment block, JSONL results, tables.

Every result is one JSON object per measurement (STYLE.md "Benchmark conventions"):
    {"bench": ..., "provider": ..., "params": {...}, "metric": ..., "unit": ...,
     "p50": ..., "p20": ..., "p80": ..., (derived: "tok_s", "gbps", ...), "env": env()}
written to profiling/results/<YYYYMMDD>-<card>-<gitsha>.jsonl (one file per run and card; appended).

    from profiling.common import bench_cpu, bench_gpu, env, write_jsonl, print_table
    t = bench_gpu(lambda: op(x))            # {"p50": ms, "p20": ms, "p80": ms} via triton do_bench
    t = bench_cpu(lambda: build(), rep=3)   # same keys, wall-clock ms
    write_jsonl([{"bench": "x", **t, ...}])  # adds env, returns the path
"""

from __future__ import annotations

import datetime as _dt
import functools
import gc
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "profiling" / "results"
QUANTILES = (0.5, 0.2, 0.8)


# ----------------------------------------------------------------------------- environment
def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,power.limit", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


@functools.cache
def env() -> dict:
    """Where a number was measured: gpu (or cpu), driver, library versions, git sha/dirty, time."""
    import torch

    has_cuda = torch.cuda.is_available()
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "gpu": torch.cuda.get_device_name(0) if has_cuda else None,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "driver": _driver() if has_cuda else None,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "numba": _version("numba"),
        "numpy": _version("numpy"),
        # A shipped copy (the lent GPU machine gets the work tree, with a stale or no .git) names
        # its commit in SAMGPU_GIT_SHA / SAMGPU_GIT_DIRTY, set by whoever ships it; they win.
        "samgpu_sha": os.environ.get("SAMGPU_GIT_SHA") or _git("rev-parse", "--short=12", "HEAD"),
        "dirty": os.environ["SAMGPU_GIT_DIRTY"] == "1"
        if "SAMGPU_GIT_DIRTY" in os.environ
        else (bool(dirty) if dirty is not None else None),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def card(e: dict | None = None) -> str:
    """Short name of the measuring device for file names: h100, h200, a100, ... or cpu."""
    e = e or env()
    name = e.get("gpu")
    if not name:
        return "cpu"
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name.upper())
    return (m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")).lower()


# ----------------------------------------------------------------------------- timing
def _summary(samples_ms: Sequence[float]) -> dict:
    import numpy as np

    q = np.quantile(np.asarray(samples_ms, dtype=np.float64), QUANTILES)
    return {"p50": float(q[0]), "p20": float(q[1]), "p80": float(q[2]), "n": len(samples_ms)}


def bench_cpu(fn: Callable[[], object], *, rep: int = 5, warmup: int = 1) -> dict:
    """Wall-clock milliseconds of fn() on the host: p50/p20/p80 over `rep` runs after `warmup`."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(rep):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return _summary(samples)


def bench_gpu(fn: Callable[[], object], *, rep_ms: int = 100, warmup_ms: int = 25) -> dict:
    """GPU milliseconds via triton.testing.do_bench (L2 flushed, CUDA events), p50/p20/p80."""
    from triton.testing import do_bench

    p50, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES))
    return {"p50": float(p50), "p20": float(p20), "p80": float(p80)}


# ----------------------------------------------------------------------------- output
def describe_compile(hook_kwargs: dict) -> str:
    """`kernel(arg:type, ptr:*i32/16, ...)` from a jit_cache_hook call: the runtime arguments
    with the 16-divisibility Triton specialized them on (the hook's own `repr` lists only the
    first argument on Triton 3.6-3.9); the hook's repr where its `compile` data is missing."""
    shown = str(hook_kwargs.get("repr", "?"))
    data = hook_kwargs.get("compile") or {}
    signature, configs = data.get("signature"), data.get("configs")
    if not isinstance(signature, dict) or not configs:
        return shown
    names = list(signature)
    aligned = set()
    for where, attrs in dict(configs[0]).items():
        if any(attr[0] == "tt.divisibility" for attr in attrs) and where[0] < len(names):
            aligned.add(names[where[0]])
    args = [f"{n}:{t}" + "/16" * (n in aligned) for n, t in signature.items() if t != "constexpr"]
    return f"{shown.split('[')[0]}({', '.join(args)})"


class TritonCompiles:
    """The Triton JIT compilations (in-memory cache misses: a first launch or a new
    specialization) started inside a block, as (perf_counter, kernel repr): through
    `triton.knobs.runtime.jit_cache_hook`, chained to a hook already set. None fire under
    TRITON_INTERPRET (nothing compiles) or with a Triton without knobs."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []
        self._runtime = None
        self._previous = None

    def __enter__(self) -> TritonCompiles:
        try:
            from triton import knobs
        except ImportError:
            return self
        self._runtime, self._previous = knobs.runtime, knobs.runtime.jit_cache_hook

        def hook(*args, **kwargs):
            self.events.append((time.perf_counter(), describe_compile(kwargs)))
            return self._previous(*args, **kwargs) if self._previous else None

        self._runtime.jit_cache_hook = hook
        return self

    def __exit__(self, *exc) -> None:
        if self._runtime is not None:
            self._runtime.jit_cache_hook = self._previous

    def since(self, start: float) -> list[str]:
        """The kernels compiled from `start` (a perf_counter time) on, in order."""
        return [what for t, what in self.events if t >= start]


class GcPauses:
    """Python's cyclic garbage collections inside a block, as (perf_counter at the start, seconds,
    generation), through `gc.callbacks`. A collection of the oldest generation walks every tracked
    object of the process; the decode loop's host thread stops for it, and the GPU runs dry once
    the steps queued before it are done."""

    def __init__(self) -> None:
        self.events: list[tuple[float, float, int]] = []
        self._started: float | None = None

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            took = time.perf_counter() - self._started
            self.events.append((self._started, took, info["generation"]))
            self._started = None

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)

    def since(self, start: float) -> list[tuple[float, int]]:
        """(seconds, generation) of the collections started from `start` (perf_counter) on."""
        return [(took, gen) for t, took, gen in self.events if t >= start]


def results_path(e: dict | None = None) -> Path:
    """<results>/<YYYYMMDD>-<card>-<sha>.jsonl; <results> is $SAMGPU_RESULTS_DIR when set (what
    `samgpu bench --out DIR` sets; default: the folder it runs in), else profiling/results."""
    e = e or env()
    day = e["timestamp"][:10].replace("-", "")
    folder = Path(os.environ.get("SAMGPU_RESULTS_DIR") or RESULTS)
    return folder / f"{day}-{card(e)}-{e.get('samgpu_sha') or 'nogit'}.jsonl"


def write_jsonl(records: Iterable[dict], path: str | os.PathLike | None = None) -> Path:
    """Append records (each gets the env block) to `path` or the run's default results file."""
    e = env()
    path = Path(path) if path is not None else results_path(e)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for rec in records:
            f.write(json.dumps({**rec, "env": rec.get("env", e)}) + "\n")
    return path


def print_table(rows: Sequence[dict], columns: Sequence[str], *, title: str = "") -> str:
    """Markdown table of `columns` (missing cells '—'); printed and returned."""

    def cell(v) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def hardware_line(e: dict | None = None) -> str:
    """One line naming the device and versions, to print next to every table."""
    e = e or env()
    device = e["gpu"] or f"CPU {e['cpu']} ({e['cpu_count']} cores)"
    sha = f"{e['samgpu_sha']}{'+dirty' if e['dirty'] else ''}"
    return (
        f"{device}; driver {e['driver'] or '—'}; torch {e['torch']}, triton {e['triton']}, "
        f"transformers {e['transformers']}; samgpu {sha}; {e['timestamp']}"
    )


# ----------------------------------------------------------------------------- model shapes
def random_model(config, device, dtype):
    """A transformers model of `config`'s architecture with random weights, built on `device`
    (no CPU copy of a 7B model first), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def llama2_7b_config():
    """Llama-2-7B shapes for random-weight cost benchmarks (no download): 4096 hidden, 32 layers,
    32 heads (no GQA), 11008 MLP, 32000 vocab."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    )


def smollm2_135m_config():
    """SmolLM2-135M shapes (the default model) for random-weight runs that need no model file:
    576 hidden, 30 layers, 9 heads over 3 KV heads (head_dim 64), 1536 MLP, 49152 vocab, tied."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
