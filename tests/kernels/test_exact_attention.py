"""Exact attention (issue 15): a query's output is bit-identical whenever its q and its logical key
sequence are the same, whatever B, N or T, the slot, the batch mates, the cache/tree split of its
context, or the entry point (tree verify, one-token decode, prefill chunk). Bitwise checks use
torch.equal; negative controls show the checks have teeth (a split size that follows B, a block
size that follows N, and the fast tree kernel, whose key blocks restart at cache_len, all change
the bits); accuracy is checked against the references with tolerances.

One "world" per test: a logical K/V sequence of P = CTX + 1 positions per kv head and one query q.
It is embedded in many batches; the target row's output must never change."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from samgpu.kernels.exact_attention import (
    exact_attention,
    exact_attention_ref,
    exact_attention_triton,
    exact_chain_plan,
    exact_prefill_attention,
    exact_prefill_attention_ref,
    exact_prefill_attention_triton,
    exact_tree_plan,
)
from samgpu.kernels.tree_attention import tree_attention_triton

CUDA = torch.cuda.is_available()
HQ, HKV, D = 4, 2, 16
CTX = 68  # logical positions before the query: the query sits at logical 68 (69 keys)
# Small blocks and splits so that 69 keys cross several blocks (16) and splits (32); the test
# configuration is as fixed for the whole test as the defaults are for a run.
KNOBS = {"block_n": 16, "split_tokens": 32}
MATE_CTX = 12
VARIANTS = [
    pytest.param(torch.float32, False, id="fp32"),
    pytest.param(torch.bfloat16, False, id="bf16"),
    pytest.param(
        torch.float32,
        True,
        id="fp32-tc",
        marks=pytest.mark.skipif(
            CUDA, reason="fp32 operands take FMA dots anyway; bf16-tc on CUDA"
        ),
    ),
    pytest.param(
        torch.bfloat16,
        True,
        id="bf16-tc",
        marks=pytest.mark.skipif(not CUDA, reason="the interpreter computes bf16 tl.dot wrongly"),
    ),
]

# The interpreter's tl.dot is numpy's matmul, not the tensor cores: only the GPU can tell whether
# the tensor-core variant is invariant, so on CPU its logic is checked against the reference only.
INVARIANCE_VARIANTS = [v for v in VARIANTS if v.id != "fp32-tc"]


def ancestor_mask(parents: list[int]) -> torch.Tensor:
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return mask


def path_to(parents: list[int], node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


class World:
    """The target: logical keys/values [HKV, CTX + 1, D] and its query q [HQ, D]."""

    def __init__(self, dtype: torch.dtype, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.dtype = dtype
        self.k = torch.randn(HKV, CTX + 1, D, generator=g).to(dtype)
        self.v = torch.randn(HKV, CTX + 1, D, generator=g).to(dtype)
        self.q = torch.randn(HQ, D, generator=g).to(dtype)
        self.g = torch.Generator().manual_seed(seed + 1)  # batch mates' noise

    def noise(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g).to(self.dtype)

    def tree(self, b: int, slot: int, parents: list[int], target: int, max_len: int):
        """Batch of b trees; sequence `slot` holds the world with the target node at depth d,
        its ancestors' keys at cache_len + their index and the prefix in the cache."""
        n = len(parents)
        path = path_to(parents, target)
        cache_len = CTX + 1 - len(path)
        q = self.noise(b, n, HQ, D)
        k, v = self.noise(b, HKV, max_len, D), self.noise(b, HKV, max_len, D)
        # Batch mates get short contexts: other sequences never share a program (interpreter time).
        lens = [int(x) for x in torch.randint(0, MATE_CTX, (b,), generator=self.g)]
        lens[slot] = cache_len
        q[slot, target] = self.q
        k[slot, :, :cache_len] = self.k[:, :cache_len]
        v[slot, :, :cache_len] = self.v[:, :cache_len]
        for depth, node in enumerate(path):
            k[slot, :, cache_len + node] = self.k[:, cache_len + depth]
            v[slot, :, cache_len + node] = self.v[:, cache_len + depth]
        masks = [ancestor_mask(parents)] * b
        cache = torch.tensor(lens, dtype=torch.int32)
        return q, k, v, cache, torch.stack(masks)

    def prefill(self, b: int, slot: int, start: int, t: int, max_len: int):
        """Batch of b chunks of T = t tokens; sequence `slot` starts at `start` and its query
        at row CTX - start is the world's query."""
        q = self.noise(b, t, HQ, D)
        k, v = self.noise(b, HKV, max_len, D), self.noise(b, HKV, max_len, D)
        starts = [int(x) for x in torch.randint(0, MATE_CTX, (b,), generator=self.g)]
        lens = [int(x) for x in torch.randint(0, min(t, MATE_CTX) + 1, (b,), generator=self.g)]
        starts[slot], lens[slot] = start, t
        q[slot, CTX - start] = self.q
        k[slot, :, : CTX + 1] = self.k
        v[slot, :, : CTX + 1] = self.v
        return (
            q,
            k,
            v,
            torch.tensor(starts, dtype=torch.int32),
            torch.tensor(lens, dtype=torch.int32),
        )


def run_tree(world, b, slot, parents, target, max_len, device, tensor_cores, **knobs):
    inputs = [x.to(device) for x in world.tree(b, slot, parents, target, max_len)]
    out = exact_attention_triton(*inputs, tensor_cores=tensor_cores, **{**KNOBS, **knobs})
    return out[slot, target].cpu()


def run_prefill(world, b, slot, start, t, max_len, device, tensor_cores, **knobs):
    inputs = [x.to(device) for x in world.prefill(b, slot, start, t, max_len)]
    out = exact_prefill_attention_triton(*inputs, tensor_cores=tensor_cores, **{**KNOBS, **knobs})
    return out[slot, CTX - start].cpu()


def decoded_alone(world, device, tensor_cores, b=1, slot=0, max_len=96, **knobs):
    """The token decoded by itself after its ancestors were appended: a root-only tree."""
    return run_tree(world, b, slot, [-1], 0, max_len, device, tensor_cores, **knobs)


CHAIN7 = [-1, 0, 1, 2, 3, 4, 5]
BUSHY7 = [-1, 0, 0, 1, 1, 2, 4]  # node 6 at depth 3 (path 0-1-4-6)
BUSHY16 = [-1, 0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 6, 8, 8, 9, 12]  # node 15: path 0-1-4-8-12-15


@pytest.mark.parametrize("dtype, tensor_cores", INVARIANCE_VARIANTS)
def test_same_query_same_bits_everywhere(dtype, tensor_cores, device):
    """Depth-d node of a tree after cache_len c == the token decoded alone at cache_len c + d ==
    the same query in a prefill chunk, for B = 1, 3, 8, N = 1, 7, 16, any slot, any capacity,
    any cache/tree split of the context."""
    world = World(dtype)
    want = decoded_alone(world, device, tensor_cores)
    ref = exact_attention_ref(*world.tree(1, 0, [-1], 0, 96))[0, 0]  # fp32 math: accuracy, not bits
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(want.float(), ref.float(), rtol=tol, atol=tol)
    cases = {
        "decode B=3 slot 2": decoded_alone(world, device, tensor_cores, b=3, slot=2, max_len=80),
        "decode B=8 slot 5": decoded_alone(world, device, tensor_cores, b=8, slot=5, max_len=128),
        "chain N=7 depth 6, B=8 slot 6": run_tree(world, 8, 6, CHAIN7, 6, 96, device, tensor_cores),
        "tree N=7 depth 3, B=3 slot 0": run_tree(world, 3, 0, BUSHY7, 6, 96, device, tensor_cores),
        "tree N=16 depth 5, B=3 slot 1": run_tree(
            world, 3, 1, BUSHY16, 15, 96, device, tensor_cores
        ),
        "tree N=16 depth 1, B=1": run_tree(world, 1, 0, BUSHY16, 2, 100, device, tensor_cores),
        "prefill whole prompt B=1": run_prefill(world, 1, 0, 0, CTX + 1, 96, device, tensor_cores),
        "prefill chunk start 40, B=3 slot 1": run_prefill(
            world, 3, 1, 40, 29, 96, device, tensor_cores
        ),
        "prefill chunk start 60, B=8 slot 7": run_prefill(
            world, 8, 7, 60, 9, 112, device, tensor_cores
        ),
    }
    differ = [name for name, got in cases.items() if not torch.equal(got, want)]
    assert differ == [], differ


def test_negative_control_split_size_following_b(device):
    """A split size chosen from B (16 at B=3, 32 at B=1) changes the bits: the fixed split is
    what makes the output batch-invariant."""
    world = World(torch.float32)
    alone = decoded_alone(world, device, False)
    in_batch = decoded_alone(world, device, False, b=3, slot=1, split_tokens=16)
    assert not torch.equal(alone, in_batch)
    torch.testing.assert_close(alone, in_batch, rtol=1e-5, atol=1e-5)  # only the rounding moved


def test_negative_control_block_size_following_n(device):
    """A key block that follows N (16 for a decode step, 32 for a 7-node tree) changes the bits."""
    world = World(torch.float32)
    alone = decoded_alone(world, device, False)
    tree = run_tree(world, 1, 0, CHAIN7, 6, 96, device, False, block_n=32)
    assert not torch.equal(alone, tree)
    torch.testing.assert_close(alone, tree, rtol=1e-5, atol=1e-5)


def test_negative_control_fast_kernel_blocks_follow_cache_len(device):
    """The fast tree kernel starts a new key block at cache_len (its prefix and tree loops): the
    node at depth 6 after cache_len 62 and the same token decoded alone at cache_len 68 get
    different bits (exact_attention gives them the same, test above)."""
    world = World(torch.float32)
    tree_inputs = [x.to(device) for x in world.tree(1, 0, CHAIN7, 6, 96)]
    alone_inputs = [x.to(device) for x in world.tree(1, 0, [-1], 0, 96)]
    tree = tree_attention_triton(*tree_inputs, block_m=16, block_n=16)[0, 6].cpu()
    alone = tree_attention_triton(*alone_inputs, block_m=16, block_n=16)[0, 0].cpu()
    assert not torch.equal(tree, alone)
    torch.testing.assert_close(tree, alone, rtol=1e-5, atol=1e-5)


def test_plan_of_the_docstring_example():
    """cache_len 5, parents [-1, 0, 0, 1]: node 3 sees logical 0..7; logical 5, 6, 7 at slots
    5, 6, 8."""
    mask = ancestor_mask([-1, 0, 0, 1])[None]
    plan = exact_tree_plan(torch.tensor([5], dtype=torch.int32), mask)
    assert torch.equal(plan.num_keys, torch.tensor([[6, 7, 7, 8]], dtype=torch.int32))
    assert torch.equal(plan.prefix_len, torch.full((1, 4), 5, dtype=torch.int32))
    assert plan.ancestors[0, 3, :3].tolist() == [0, 1, 3]
    assert plan.ancestors[0, 2, :2].tolist() == [0, 2]
    chain = exact_chain_plan(
        torch.tensor([3, 0], dtype=torch.int32), torch.tensor([2, 0], dtype=torch.int32), 3
    )
    assert chain.num_keys.tolist() == [[4, 5, 0], [0, 0, 0]]


def random_tree(n: int, num_nodes: int, g: torch.Generator) -> list[int]:
    parents = [-1] * n
    for i in range(1, num_nodes):
        parents[i] = int(torch.randint(0, i, (1,), generator=g))
    return parents


# (B, N, cache_lens, num_nodes, L): root-only trees (one over an empty cache), ragged trees with pad
# rows (pad rows see only themselves, as kernels/tree.py writes them), full-capacity trees
# (cache_len + N = L).
TREE_CASES = [
    pytest.param(3, 1, [0, 9, 40], [1, 1, 1], 48, id="B3-N1-root-only-empty-cache"),
    pytest.param(3, 7, [5, 0, 33], [7, 3, 1], 48, id="B3-N7-ragged-pad-rows"),
    pytest.param(2, 16, [32, 32], [16, 11], 48, id="B2-N16-full-capacity"),
]


@pytest.mark.parametrize("dtype, tensor_cores", VARIANTS)
@pytest.mark.parametrize("b, n, cache_lens, num_nodes, max_len", TREE_CASES)
def test_tree_form_matches_reference(
    b, n, cache_lens, num_nodes, max_len, dtype, tensor_cores, device
):
    g = torch.Generator().manual_seed(b * 31 + n)
    trees = [random_tree(n, nn, g) for nn in num_nodes]
    q = torch.randn(b, n, HQ, D, generator=g).to(dtype)
    k = torch.randn(b, HKV, max_len, D, generator=g).to(dtype)
    v = torch.randn(b, HKV, max_len, D, generator=g).to(dtype)
    for i, cl in enumerate(cache_lens):  # never read
        k[i, :, cl + n :] = float("nan")
        v[i, :, cl + n :] = float("nan")
    cache_len = torch.tensor(cache_lens, dtype=torch.int32)
    mask = torch.stack([ancestor_mask(p) for p in trees])
    inputs = [x.to(device) for x in (q, k, v, cache_len, mask)]
    got = exact_attention_triton(*inputs, tensor_cores=tensor_cores, **KNOBS).cpu().float()
    want = exact_attention_ref(q, k, v, cache_len, mask).float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # The default configuration (blocks, splits, rows per program) gives the same answer.
    got_default = exact_attention_triton(*inputs, tensor_cores=tensor_cores).cpu().float()
    torch.testing.assert_close(got_default, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype, tensor_cores", VARIANTS)
def test_prefill_form_matches_reference(dtype, tensor_cores, device):
    """Ragged chunks: a plain prefill, an empty sequence, a chunk after 21 cached tokens with pad
    rows; pad rows output zeros."""
    b, t, max_len = 3, 20, 48
    g = torch.Generator().manual_seed(7)
    q = torch.randn(b, t, HQ, D, generator=g).to(dtype)
    k = torch.randn(b, HKV, max_len, D, generator=g).to(dtype)
    v = torch.randn(b, HKV, max_len, D, generator=g).to(dtype)
    start = torch.tensor([0, 0, 21], dtype=torch.int32)
    lengths = torch.tensor([20, 0, 13], dtype=torch.int32)
    inputs = [x.to(device) for x in (q, k, v, start, lengths)]
    got = exact_prefill_attention_triton(*inputs, tensor_cores=tensor_cores, **KNOBS).cpu()
    want = exact_prefill_attention_ref(q, k, v, start, lengths)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    assert torch.equal(got[1], torch.zeros_like(got[1]))
    assert torch.equal(got[2, 13:], torch.zeros_like(got[2, 13:]))


def test_dispatch_plan_reuse_and_out_buffer(device):
    """One plan serves every layer; `exact_attention` picks the kernel on CUDA, the reference
    on CPU; the out buffer is filled in place."""
    world = World(torch.float32)
    q, k, v, cache_len, mask = (x.to(device) for x in world.tree(3, 1, BUSHY7, 6, 96))
    plan = exact_tree_plan(cache_len, mask)
    out = torch.full_like(q, float("nan"))
    res = exact_attention(q, k, v, cache_len, mask, out=out, plan=plan)
    assert res.data_ptr() == out.data_ptr()
    want = exact_attention_ref(q, k, v, cache_len, mask)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    start = torch.zeros(3, dtype=torch.int32, device=device)
    lengths = torch.full((3,), 7, dtype=torch.int32, device=device)
    got = exact_prefill_attention(q, k, v, start, lengths, scale=1 / math.sqrt(D))
    torch.testing.assert_close(
        got, exact_prefill_attention_ref(q, k, v, start, lengths), rtol=1e-5, atol=1e-5
    )


@pytest.mark.skipif(not CUDA, reason="host-sync detection needs CUDA")
def test_plan_and_kernel_make_no_host_sync():
    world = World(torch.bfloat16)
    q, k, v, cache_len, mask = (x.cuda() for x in world.tree(3, 1, BUSHY7, 6, 96))
    exact_attention_triton(q, k, v, cache_len, mask)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        exact_attention_triton(q, k, v, cache_len, mask)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bad_inputs_raise_value_error(device):
    world = World(torch.float32)
    q, k, v, cache_len, mask = (x.to(device) for x in world.tree(2, 1, BUSHY7, 6, 96))
    with pytest.raises(ValueError, match="tree_mask must be"):
        exact_attention_triton(q, k, v, cache_len, mask[:, :3, :3])
    with pytest.raises(ValueError, match="must be a power of two"):
        exact_attention_triton(q, k, v, cache_len, mask, block_n=12)
    with pytest.raises(ValueError, match="plan.num_keys"):
        plan = exact_tree_plan(cache_len, mask)
        plan.num_keys = plan.num_keys.long()
        exact_attention_triton(q, k, v, cache_len, mask, plan=plan)


TTGIR_SCRIPT = """
import json
import triton
from triton.backends.compiler import GPUTarget
from samgpu.kernels import exact_attention as ea
out = {}
for spec in ea.AOT_SPECS:
    c = spec.constexprs
    if spec.kernel is ea._exact_attention_kernel:
        src = triton.compiler.ASTSource(fn=spec.kernel, signature=spec.signature, constexprs=c)
        # The launcher's options (num_stages=1: no software pipelining of the key loops).
        options = {"num_warps": spec.num_warps, "num_stages": 1}
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        label = f"{spec.signature['q_ptr']} D={c['HEAD_DIM']} tensor_cores={c['TENSOR_CORES']}"
        out[label] = kernel.asm["ttgir"]
print(json.dumps(out))
"""


def key_loop_ops(ttgir: str) -> list[list[str]]:
    """Reductions and dots of each key loop (the kernel body's top-level `scf.for`s), with operand
    encodings and whether the dot's accumulator is the zero constant."""
    zeros = set(re.findall(r"(%cst\w*) = arith.constant dense<0.000000e\+00>", ttgir))
    loops: list[list[str]] = []
    lines = ttgir.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"    %[\w:]+ = scf\.for ", line):
            loops.append([])
        elif loops and '"tt.reduce"' in line:
            close = next(x for x in lines[i:] if x.strip().startswith("})"))
            loops[-1].append("reduce " + re.search(r"\((tensor<[^>]*>)\)", close).group(1))
        elif loops and " tt.dot " in line:
            acc = line.split("=", 1)[1].split(",")[2].split(":")[0].strip()
            result = re.search(r"-> (tensor<[^>]*>)", line).group(1)
            loops[-1].append(f"dot zero_acc={acc in zeros} -> {result}")
    return loops


def test_both_key_loops_compile_to_the_same_arithmetic():
    """The real sm_90 compiler (not the interpreter) gives the shared-tile loop and the per-query
    loop the same reductions and dots, in the same layouts, every dot accumulating from zero; the
    default variants' dots run on the CUDA cores (FMA, blocked layouts), never on tensor cores. A
    row's bits then cannot depend on which loop served a block (a prefix block of a tree node vs
    the same block of a decode step). This caught Triton folding `acc * alpha + dot(p, v)` into
    the dot's accumulator in one loop only."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", TTGIR_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    variants = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(variants) == 6, list(variants)  # D 64 / 128 x (fp32, bf16, bf16 tensor cores)
    for label, ttgir in variants.items():
        shared, per_query = key_loop_ops(ttgir)
        assert shared == per_query, (label, shared, per_query)
        dots = [op for op in shared if op.startswith("dot")]
        assert len(dots) == 2 and all("zero_acc=True" in op for op in dots), (label, shared)
        tensor_cores = label.endswith("tensor_cores=True")
        assert all(("#mma" in op) == tensor_cores for op in dots), (label, dots)
