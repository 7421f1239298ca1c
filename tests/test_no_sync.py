"""No host synchronisation in the decode step.

On CUDA: whole steps (eager and CUDA-graph replays, greedy and sampling) run under
torch.cuda.set_sync_debug_mode("error"), which raises on any synchronising CUDA call.
Everywhere: a static scan of the step's code (loop.py step functions, the basic drafters' propose
and update, the launchers the step calls) for calls that read GPU values on the host."""

from __future__ import annotations

import ast
import copy
import inspect
import textwrap

import pytest
import torch

FORBIDDEN_METHODS = {"item", "tolist", "cpu", "numpy", "nonzero", "unique", "synchronize"}
FORBIDDEN_FUNCS = {"print", "bool", "int", "float"}  # int(t) / bool(t) on a tensor syncs


def _violations(fn) -> list[str]:
    src = textwrap.dedent(inspect.getsource(fn))
    bad = []
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in FORBIDDEN_METHODS:
            bad.append(f"{fn.__qualname__}: .{f.attr}() at line {node.lineno}")
        is_literal = all(isinstance(a, ast.Constant) for a in node.args)  # float("-inf")
        if isinstance(f, ast.Name) and f.id in FORBIDDEN_FUNCS and not is_literal:
            bad.append(f"{fn.__qualname__}: {f.id}() at line {node.lineno}")
    return bad


def _step_functions():
    from samgpu.decoding import buffers, engine
    from samgpu.drafters import basic
    from samgpu.kernels import commit, kv_compact, randoms, tree, verify

    return [
        engine.Engine._step,
        buffers.StepViews.accumulate_stats,
        engine.Engine.step,
        basic.ArDrafter.propose,
        basic.ArDrafter.update,
        basic.TestDrafter.propose,
        basic.TestDrafter.update,
        basic.TestDrafter._errors,
        tree.tree_mask,
        tree.tree_mask_triton,
        verify.verify_greedy,
        verify.verify_greedy_triton,
        verify.verify_sample,
        verify.verify_sample_triton,
        verify.sampling_probs,
        randoms.race_tokens_triton,
        kv_compact.kv_compact,
        kv_compact.kv_compact_triton,
        commit.commit,
        commit.commit_triton,
    ]


def test_step_code_has_no_host_reads():
    bad = [v for fn in _step_functions() for v in _violations(fn)]
    assert bad == []


def test_scan_catches_a_sync():
    """Negative control: the scan flags .item(), .tolist() and bool() on a tensor."""

    def step(x):
        n = x.sum().item()
        if bool(x.any()):
            return x.tolist()
        return n

    assert len(_violations(step)) == 3


def steps_under_sync_error_mode(engine, config, prompts, steps: int = 4) -> None:
    """Load `prompts` into the first slots, then run `steps` steps (replays, once the buckets are
    captured) under set_sync_debug_mode("error"): any synchronising CUDA call raises. Every slot
    must have emitted a token per step."""
    engine.configure(config, len(prompts))
    engine.prefill(list(range(len(prompts))), prompts)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            engine.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert int(engine.state.num_generated.min()) >= steps


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="set_sync_debug_mode needs CUDA")
@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampling"])
@pytest.mark.parametrize("use_cuda_graphs", [False, True], ids=["eager", "graphs"])
def test_step_runs_without_sync_on_cuda(tiny_llama, temperature, use_cuda_graphs):
    from samgpu.decoding.config import GenerationConfig
    from samgpu.decoding.runners import make_runner
    from samgpu.factory import build_decoder

    model = copy.deepcopy(tiny_llama).to("cuda")
    runner = make_runner(model)
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    options = dict(
        references=[(p, list(range(10, 40))) for p in prompts],
        depth=3,
        branching=True,
        error_rate=0.3,
    )
    dec = build_decoder(
        runner, "test", batch_size=3, max_len=64, options=options, use_cuda_graphs=use_cuda_graphs
    )
    config = GenerationConfig(max_new_tokens=20, temperature=temperature, seed=0)
    dec.generate(prompts, config)  # compiles kernels, captures graphs
    steps_under_sync_error_mode(dec.engine, config, prompts)
