"""The one way to build a decoder: `build_decoder`. The Python API (SamDecoder, samgpu.generate),
the CLI and every benchmark in profiling/ call it, so a benchmark measures what users run.

    from samgpu.factory import build_decoder
    decoder = build_decoder(model, "sam+tr", batch_size=16, max_len=2048, index=samindex)
    out = decoder.generate(prompts, GenerationConfig(max_new_tokens=256))

It resolves the runner (the fast Llama-family runner where the model allows it; a runner object
is used as given), the method's entry in the registry, the options (the method's budget rule for
this batch size, then the caller's options, validated), checks that the buffers fit in the GPU's
free memory (a SetupError naming a batch size that fits, before anything is allocated), builds
the drafter, the Engine and the Scheduler.

Budgets: the draft tree size follows the batch size (`samgpu.drafters.registry`). On a CPU model
it is at most CPU_MAX_NODES: a CPU has no idle parallel units, so verifying N nodes costs about N
tokens' forward, and the GPU-sized 81-node tree at batch 1 would make each step ~80x a plain
decoding step.
"""

from __future__ import annotations

from typing import Any

import torch

from samgpu.decoding.engine import Engine
from samgpu.decoding.prefill_plan import GRAPH_ROWS
from samgpu.decoding.scheduler import Scheduler
from samgpu.decoding.stages import StageRange, nvtx_range
from samgpu.drafters import budget_options, build_drafter, get_method
from samgpu.drafters.registry import make_options
from samgpu.errors import InputError, SetupError

DEFAULT_METHOD = "merged"  # one sequence on a GPU (samgpu.resolve.default_method: by batch size)
CPU_MAX_NODES = 4
DYNAMIC_BYTES_PER_TOKEN = 156  # a dynamic automaton slot, per token of capacity (upper bound)
MEMORY_HEADROOM = 0.9  # share of the free GPU memory a decoder may plan to take


def method_options(
    method: str, batch_size: int, device: torch.device | str, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The options `method` is built with at `batch_size` on `device`: its budget rule's
    max_nodes (unless the caller set one), then the caller's options. Validated (unknown names
    and bad values are ValueErrors naming the option)."""
    budget = budget_options(method, batch_size)
    if torch.device(device).type == "cpu" and "max_nodes" in budget:
        budget["max_nodes"] = min(budget["max_nodes"], CPU_MAX_NODES)
    merged = {**budget, **(options or {})}
    make_options(get_method(method), merged)
    return merged


def draft_nodes(
    method: str, batch_size: int, device: torch.device | str, options: dict[str, Any] | None = None
) -> int:
    """The most tree nodes `method` drafts per sequence with these options (sizes the cache)."""
    entry = get_method(method)
    return entry.max_nodes(make_options(entry, method_options(method, batch_size, device, options)))


def memory_estimate(
    runner, method: str, batch_size: int, max_len: int, options: dict[str, Any] | None = None
) -> dict[str, int]:
    """Bytes the decoder's buffers take on the GPU (a planning figure, before allocating): the KV
    cache, the step's logits, the dynamic automata of the SAM methods and the refill scratch
    cache. Weights and the static index are already resident and not counted."""
    kv_token = 2 * runner.num_layers * runner.num_kv_heads * runner.head_dim
    dtype_bytes = torch.finfo(runner.dtype).bits // 8
    kv_token *= dtype_bytes
    nodes = draft_nodes(method, batch_size, runner.device, options)
    logit_bytes = torch.finfo(runner.logits_dtype).bits // 8
    parts = {
        "kv_cache": kv_token * batch_size * max_len,
        "logits": logit_bytes * batch_size * (nodes + 1) * runner.vocab_size,
        # (a one-slot cache is its own scratch: Prefiller._allocate_scratch)
        "refill_scratch": kv_token * min(batch_size, GRAPH_ROWS) * max_len * (batch_size > 1),
    }
    entry = get_method(method)
    if entry.head_layers:  # a drafter's own cache (EAGLE head) and the prompts' hidden states
        per_layer = kv_token // runner.num_layers
        hidden = runner.hidden_size * dtype_bytes
        parts["drafter_cache"] = per_layer * entry.head_layers * batch_size * max_len
        parts["prompt_hidden"] = hidden * min(batch_size, GRAPH_ROWS) * max_len
    if entry.needs_index:
        parts["dynamic_automata"] = DYNAMIC_BYTES_PER_TOKEN * batch_size * max_len
    return parts


def check_memory(runner, method: str, batch_size: int, max_len: int, options=None) -> None:
    """A SetupError naming a batch size that fits when the decoder's buffers would not fit in the
    GPU's free memory (CUDA only)."""
    if runner.device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(runner.device)
    need = sum(memory_estimate(runner, method, batch_size, max_len, options).values())
    if need <= MEMORY_HEADROOM * free:
        return
    fits = batch_size
    while fits > 1:
        fits //= 2
        if sum(memory_estimate(runner, method, fits, max_len, options).values()) <= (
            MEMORY_HEADROOM * free
        ):
            break
    gib = 1 << 30
    raise SetupError(
        f"batch size {batch_size} with {max_len} tokens per sequence needs about "
        f"{need / gib:.1f} GiB of GPU memory for its buffers (KV cache "
        f"{memory_estimate(runner, method, batch_size, max_len, options)['kv_cache'] / gib:.1f}"
        f" GiB) but {free / gib:.1f} GiB are free: use --batch-size {fits} or less, or shorter"
        " prompts / --max-new-tokens"
    )


def build_decoder(
    model,
    method: str = DEFAULT_METHOD,
    *,
    batch_size: int,
    max_len: int,
    index: Any = None,
    options: dict[str, Any] | None = None,
    use_cuda_graphs: bool = True,
    stage_range: StageRange = nvtx_range,
    exact: bool = False,
) -> Scheduler:
    """A decoder (Scheduler over an Engine) for `batch_size` slots of `max_len` tokens each.

    model: a transformers causal LM or a runner (`samgpu.decoding.runners`). index: the static
    automaton for methods that draft from one (SamIndex, path, StaticAutomaton) or None. options:
    the method's options (e.g. {"l_threshold": 5}); max_nodes defaults to the budget rule. exact:
    the invariant forward (a runner passed in decides this itself)."""
    from samgpu.decoding.runners import make_runner

    runner = model if hasattr(model, "forward_tree") else make_runner(model, exact=exact)
    opts = method_options(method, batch_size, runner.device, options)
    check_memory(runner, method, batch_size, max_len, options)
    try:
        drafter = build_drafter(
            method,
            vocab_size=runner.vocab_size,
            max_reqs=batch_size,
            max_len=max_len,
            device=runner.device,
            index=index,
            hidden_size=getattr(runner, "hidden_size", None),
            target=runner,
            **opts,
        )
    except ValueError as e:  # what the method's files and options do not fit (e.g. a head file)
        if isinstance(e, InputError):
            raise
        raise InputError(f"method {method!r}: {e}") from e
    engine = Engine(
        runner,
        drafter,
        max_reqs=batch_size,
        max_len=max_len,
        use_cuda_graphs=use_cuda_graphs,
        stage_range=stage_range,
    )
    return Scheduler(engine)


__all__ = [
    "CPU_MAX_NODES",
    "DEFAULT_METHOD",
    "build_decoder",
    "check_memory",
    "draft_nodes",
    "memory_estimate",
    "method_options",
]
