"""forward_tree by branch equivalence: the logits at every tree node equal a plain causal forward of
the committed text followed by the node's root-to-node path, for a ragged batch.

Example (sequence 0 below): committed text c0..c5 in the cache (cache_len 6), tree
    node:    0  1  2  3  4  5
    parent: -1  0  0  1  1  3        (root r; children a, x; a's children b, y; b's child c)
node 5's logits = logits after "c0..c5 r a b c"; node 2's = after "c0..c5 r x". Its K/V lands at
cache slot 6 + 5 and equals the K/V a causal prefill of that path puts at slot 6 + depth(5) = 9.
"""

import pytest
import torch

from samgpu.decoding.runners import make_runner
from samgpu.decoding.runners.llama import LlamaRunner
from tests.decoding.conftest import TINY_VOCAB

PARENTS = [
    [-1, 0, 0, 1, 1, 3],  # branching tree
    [-1, 0, 1, 0, 3, 4],  # two chains from the root
]
CACHE_LENS = [6, 2]


def ancestors(parents: list[int], i: int) -> list[int]:
    """Root-to-node path of node i (node indices, root first)."""
    path = []
    while i >= 0:
        path.append(i)
        i = parents[i]
    return path[::-1]


def tree_inputs(parents_per_seq, cache_lens, n):
    """Mask, positions (cache_len + depth) from parent lists, written without the tree kernel."""
    b = len(parents_per_seq)
    mask = torch.zeros(b, n, n, dtype=torch.bool)
    positions = torch.zeros(b, n, dtype=torch.int32)
    for s, parents in enumerate(parents_per_seq):
        for i in range(n):
            path = ancestors(parents, i) if i < len(parents) else [i]  # pad rows: only themselves
            mask[s, i, path] = True
            positions[s, i] = cache_lens[s] + len(path) - 1
    return mask, positions


def run_tree(runner, texts, tree_tokens, parents_per_seq, n=None):
    """Prefill texts (ragged), then verify the trees in one call; returns (logits, cache)."""
    b = len(texts)
    n = n or max(len(t) for t in tree_tokens)
    cache_lens = [len(t) for t in texts]
    ids = torch.zeros(b, max(cache_lens), dtype=torch.int32)
    for s, text in enumerate(texts):
        ids[s, : len(text)] = torch.tensor(text, dtype=torch.int32)
    cache = runner.allocate_cache(b, 32)
    runner.prefill(ids, torch.tensor(cache_lens, dtype=torch.int32), cache)
    tokens = torch.zeros(b, n, dtype=torch.int32)  # pad nodes: token 0
    for s, toks in enumerate(tree_tokens):
        tokens[s, : len(toks)] = torch.tensor(toks, dtype=torch.int32)
    mask, positions = tree_inputs(parents_per_seq, cache_lens, n)
    out = torch.full((b, n, runner.vocab_size), float("nan"))
    runner.forward_tree(tokens, positions, mask, cache, out)
    return out, cache


def branch_logits(model, text, toks, parents) -> dict[int, torch.Tensor]:
    """node -> transformers' logits after text + the node's path; one causal forward per leaf."""
    leaves = [i for i in range(len(parents)) if i not in parents]
    result = {}
    for leaf in leaves:
        path = ancestors(parents, leaf)
        with torch.no_grad():
            logits = model(torch.tensor([text + [toks[j] for j in path]])).logits[0].float()
        for depth, node in enumerate(path):
            result[node] = logits[len(text) + depth]
    return result


def random_case(seed=3):
    g = torch.Generator().manual_seed(seed)
    texts = [torch.randint(0, TINY_VOCAB, (c,), generator=g).tolist() for c in CACHE_LENS]
    toks = [torch.randint(0, TINY_VOCAB, (len(p),), generator=g).tolist() for p in PARENTS]
    return texts, toks


@pytest.mark.parametrize("backend", ["fast", "fast-triton", "generic"])
def test_every_node_equals_its_branch(tiny_llama, backend, monkeypatch):
    """fast-triton runs the Triton tree-attention kernel (interpreter on CPU) inside the runner."""
    if backend == "fast-triton":
        monkeypatch.setenv("SAMGPU_BACKEND", "triton")
    runner = make_runner(tiny_llama, prefer="generic" if backend == "generic" else "fast")
    texts, toks = random_case()
    out, _ = run_tree(runner, texts, toks, PARENTS)
    for s in range(len(texts)):
        want = branch_logits(tiny_llama, texts[s], toks[s], PARENTS[s])
        assert sorted(want) == list(range(len(PARENTS[s])))
        for i, logits in want.items():
            torch.testing.assert_close(out[s, i], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefer", ["fast", "generic"])
def test_node_kv_lands_at_cache_len_plus_index(tiny_llama, prefer):
    """Node i's K/V sits at slot cache_len + i and equals what prefilling its path writes at slot
    cache_len + depth(i)."""
    runner = make_runner(tiny_llama, prefer=prefer)
    texts, toks = random_case()
    _, cache = run_tree(runner, texts, toks, PARENTS)
    for s, (text, parents) in enumerate(zip(texts, PARENTS, strict=True)):
        for i in (2, 5):
            path = [toks[s][j] for j in ancestors(parents, i)]
            ref = runner.allocate_cache(1, 32)
            full = text + path
            runner.prefill(torch.tensor([full], dtype=torch.int32), torch.tensor([len(full)]), ref)
            got_slot, want_slot = len(text) + i, len(full) - 1
            for kv, kv_ref in ((cache.k, ref.k), (cache.v, ref.v)):
                torch.testing.assert_close(
                    kv[:, s, :, got_slot], kv_ref[:, 0, :, want_slot], rtol=1e-5, atol=1e-5
                )
            # The prefix is untouched by the tree step.
            assert torch.equal(cache.cache_len[s], torch.tensor(len(text), dtype=torch.int32))


def test_pad_nodes_do_not_change_real_nodes(tiny_llama):
    """num_nodes 6 padded to N = 9 (pad rows see only themselves): real nodes' logits are those of
    the unpadded tree."""
    runner = LlamaRunner(tiny_llama)
    texts, toks = random_case()
    exact, _ = run_tree(runner, texts, toks, PARENTS)
    padded, _ = run_tree(runner, texts, toks, PARENTS, n=9)
    torch.testing.assert_close(padded[:, :6], exact, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(padded).all()


def test_default_model_tree_branches(default_model_fp32):
    """SmolLM2-135M fp32: branching trees over two prompts of different lengths (cache_len 4 and 2,
    roots "is" and "of"); every node equals its branch."""
    model, tok = default_model_fp32
    runner = make_runner(model)
    ids = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5
    texts = [ids[:-1], ids[:2]]
    toks = [[ids[-1], 4875, 260, 1029, 314, 28], [ids[2], 282, 3300, 314, 2330, 28]]
    out, _ = run_tree(runner, texts, toks, PARENTS)
    for s in range(2):
        for i, want in branch_logits(model, texts[s], toks[s], PARENTS[s]).items():
            scale = want.abs().max()
            torch.testing.assert_close(out[s, i], want, rtol=1e-4, atol=1e-4 * scale)
