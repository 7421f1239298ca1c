"""Tree attention: node i of sequence b attends to the cached prefix [0, cache_len[b]) and to its
tree ancestors (itself included), stored at cache_len[b] + j. Checked by branch equivalence: the
output of every node equals plain softmax attention over prefix + root-to-node path, written out
by hand."""

import math

import pytest
import torch

from samgpu.kernels.tree_attention import (
    tree_attention,
    tree_attention_ref,
    tree_attention_triton,
)

CUDA = torch.cuda.is_available()


def ancestor_mask(parents: list[int]) -> torch.Tensor:
    """[N, N] bool: row i = {i} + ancestors of i (written independently of kernels/tree.py)."""
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return mask


def path_attention(q, k_cache, v_cache, cache_len, parents_per_seq, scale):
    """Loop-level spec: for each (b, i, h), softmax over prefix keys + the keys of i's path."""
    b_, n, hq, d = q.shape
    hkv = k_cache.shape[1]
    out = torch.zeros(b_, n, hq, d, dtype=torch.float64)
    for b in range(b_):
        cl = int(cache_len[b])
        for i in range(n):
            path, j = [], i
            while j >= 0:
                path.append(j)
                j = parents_per_seq[b][j]
            slots = list(range(cl)) + [cl + j for j in sorted(path)]
            for h in range(hq):
                kvh = h // (hq // hkv)
                keys = k_cache[b, kvh, slots].double()
                vals = v_cache[b, kvh, slots].double()
                w = torch.softmax(keys @ q[b, i, h].double() * scale, dim=0)
                out[b, i, h] = w @ vals
    return out


def make_case(b, n, hq, hkv, d, max_len, cache_lens, parents_per_seq, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, hq, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, max_len, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, max_len, d, generator=g).to(dtype)
    cache_len = torch.tensor(cache_lens, dtype=torch.int32)
    mask = torch.stack([ancestor_mask(p) for p in parents_per_seq])
    return q, k, v, cache_len, mask


# Two sequences with different prefixes (one empty) and different trees:
# seq 0: root with children 1, 2; node 3 under 1; node 4 under 3 (a branch of depth 3)
# seq 1: a chain 0-1-2-3-4
TREES = [[-1, 0, 0, 1, 3], [-1, 0, 1, 2, 3]]


@pytest.mark.parametrize(
    "dtype, atol",
    [
        (torch.float32, 1e-5),
        (torch.float16, 2e-3),
        pytest.param(
            torch.bfloat16,
            2e-2,
            marks=pytest.mark.skipif(
                not CUDA, reason="the Triton interpreter computes tl.dot on bf16 wrongly"
            ),
        ),
    ],
)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_kernel_matches_branch_equivalence(dtype, atol, num_splits, device):
    """Ragged batch (cache_len 70 and 0: two prefix blocks of 64, and none), GQA 4 q heads on 2 kv
    heads, head_dim 24 (padded to 32 inside the kernel). With 3 splits the prefix of 70 is cut into
    [0, 64), [64, 70) and an empty third chunk, which also holds the tree part."""
    b, n, hq, hkv, d, max_len = 2, 5, 4, 2, 24, 80
    q, k, v, cache_len, mask = make_case(b, n, hq, hkv, d, max_len, [70, 0], TREES, dtype)
    scale = 1 / math.sqrt(d)
    want = path_attention(q, k, v, cache_len, TREES, scale)
    inputs = (t.to(device) for t in (q, k, v, cache_len, mask))
    got = tree_attention_triton(*inputs, num_splits=num_splits).cpu()
    ref = tree_attention_ref(q, k, v, cache_len, mask)
    # Error judged against PyTorch's own error in the same dtype (flash-attention's yardstick).
    torch_err = (ref.double() - want).abs().max().item()
    kernel_err = (got.double() - want).abs().max().item()
    assert kernel_err <= 2 * torch_err + atol, (kernel_err, torch_err)
    assert got.dtype == dtype and got.shape == (b, n, hq, d)


def test_reference_matches_branch_equivalence():
    b, n, hq, hkv, d, max_len = 2, 5, 6, 3, 8, 12
    q, k, v, cache_len, mask = make_case(b, n, hq, hkv, d, max_len, [3, 7], TREES, torch.float64)
    want = path_attention(q, k, v, cache_len, TREES, 0.3)
    got = tree_attention_ref(q, k, v, cache_len, mask, scale=0.3)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_many_rows_and_tree_blocks(num_splits, device):
    """group * N = 2 * 70 rows (3 row blocks of 64), N = 70 nodes (2 key blocks in the tree part):
    a chain, so node i sees the whole prefix and nodes 0..i; keys beyond cache_len + N are never
    read (filled with NaN to prove it)."""
    b, n, hq, hkv, d, max_len = 1, 70, 2, 1, 16, 100
    chain = [list(range(-1, n - 1))]
    q, k, v, cache_len, mask = make_case(b, n, hq, hkv, d, max_len, [9], chain, torch.float32)
    k[:, :, 9 + n :] = float("nan")
    v[:, :, 9 + n :] = float("nan")
    inputs = (t.to(device) for t in (q, k, v, cache_len, mask))
    got = tree_attention_triton(*inputs, num_splits=num_splits).cpu()
    want = path_attention(q, k, v, cache_len, chain, 1 / math.sqrt(d))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_query_seeing_nothing_outputs_zeros(device):
    """A pad row with an empty mask over an empty cache: zeros, not NaN, in both implementations."""
    q, k, v, cache_len, mask = make_case(1, 2, 2, 2, 16, 4, [0], [[-1, 0]], torch.float32)
    mask[0, 1] = False
    q, k, v, cache_len, mask = (t.to(device) for t in (q, k, v, cache_len, mask))
    split = lambda *a: tree_attention_triton(*a, num_splits=2)
    for impl in (tree_attention_triton, split, tree_attention_ref):
        out = impl(q, k, v, cache_len, mask)
        assert torch.equal(out[0, 1], torch.zeros(2, 16, device=device))
        assert torch.isfinite(out).all()


def test_out_buffer_and_dispatch(device):
    """On CUDA `tree_attention` dispatches to the kernel, on CPU to the reference."""
    case = make_case(2, 5, 4, 2, 16, 12, [4, 6], TREES, torch.float32)
    q, k, v, cache_len, mask = (t.to(device) for t in case)
    out = torch.full_like(q, float("nan"))
    res = tree_attention(q, k, v, cache_len, mask, out=out)
    assert res.data_ptr() == out.data_ptr()
    want = tree_attention_ref(q, k, v, cache_len, mask)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    out2 = torch.full_like(q, float("nan"))
    tree_attention_triton(q, k, v, cache_len, mask, out=out2)
    torch.testing.assert_close(out2, want, rtol=1e-5, atol=1e-5)


def test_bad_shapes_raise_value_error(device):
    case = make_case(2, 5, 4, 2, 16, 12, [4, 6], TREES, torch.float32)
    q, k, v, cache_len, mask = (t.to(device) for t in case)
    with pytest.raises(ValueError, match="tree_mask must be"):
        tree_attention_ref(q, k, v, cache_len, mask[:, :4, :4])
    with pytest.raises(ValueError, match="not a multiple"):
        tree_attention_triton(q[:, :, :3], k, v, cache_len, mask)
    with pytest.raises(ValueError, match="cache_len must be"):
        tree_attention_triton(q, k, v, cache_len.long(), mask)
    with pytest.raises(ValueError, match="differ"):
        tree_attention_triton(q, k.half(), v.half(), cache_len, mask)
    with pytest.raises(ValueError, match="out must be"):
        tree_attention_triton(q, k, v, cache_len, mask, out=torch.empty(2, 5, 4, 8, device=device))
    with pytest.raises(ValueError, match="num_splits=65"):
        tree_attention_triton(q, k, v, cache_len, mask, num_splits=65)
    with pytest.raises(ValueError, match="power of two"):
        tree_attention_triton(q, k, v, cache_len, mask, block_n=48)


def random_parents(n: int, num_nodes: int, g: torch.Generator) -> list[int]:
    """Topological random tree of num_nodes real nodes; pad nodes (>= num_nodes) have no parent,
    so their mask row holds only themselves (as kernels/tree.py writes pad rows)."""
    parents = [-1] * n
    for i in range(1, num_nodes):
        parents[i] = int(torch.randint(0, i, (1,), generator=g))
    return parents


# (B, N, cache_lens, num_nodes): decode steps (root-only trees, one with an empty cache), a ragged
# batch of 7-node trees with pad rows, full-capacity trees (cache_len + N = L = 48).
DECODE = (3, 1, [0, 17, 33], [1, 1, 1])
RAGGED = (3, 7, [5, 0, 40], [7, 3, 1])
FULL = (8, 16, [32] * 8, [16, 16, 9, 1, 16, 5, 16, 2])
# (block_m, block_n, num_splits, num_warps, num_stages): the knobs the GPU sweep turns.
CONFIGS = {
    "m16-n16-s1": (16, 16, 1, 4, 3),
    "m16-n32-s3": (16, 32, 3, 4, 2),
    "m32-n16-s8": (32, 16, 8, 2, 1),
    "m64-n64-s2": (64, 64, 2, 8, 4),
}
CASES = [
    pytest.param(*geometry, *CONFIGS[c], id=f"{name}-{c}")
    for name, geometry, configs in (
        ("B3-N1-decode-empty-cache", DECODE, CONFIGS),
        ("B3-N7-ragged-pad-rows", RAGGED, CONFIGS),
        ("B8-N16-full-capacity", FULL, ("m16-n32-s3",)),  # interpreter time
    )
    for c in configs
]


@pytest.mark.parametrize(
    "b, n, cache_lens, num_nodes, block_m, block_n, num_splits, num_warps, num_stages", CASES
)
def test_configurations_match_branch_equivalence(
    b, n, cache_lens, num_nodes, block_m, block_n, num_splits, num_warps, num_stages, device
):
    """Every configuration gives the spec's answer: GQA 4 q heads on 2 kv heads, head_dim 16;
    slots past cache_len + N hold NaN (never read)."""
    hq, hkv, d, max_len = 4, 2, 16, 48
    g = torch.Generator().manual_seed(b * 100 + n)
    trees = [random_parents(n, nn, g) for nn in num_nodes]
    q, k, v, cache_len, mask = make_case(
        b, n, hq, hkv, d, max_len, cache_lens, trees, torch.float32
    )
    for i, cl in enumerate(cache_lens):
        k[i, :, cl + n :] = float("nan")
        v[i, :, cl + n :] = float("nan")
    want = path_attention(q, k, v, cache_len, trees, 1 / math.sqrt(d))
    inputs = [t.to(device) for t in (q, k, v, cache_len, mask)]
    got = tree_attention_triton(
        *inputs,
        block_m=block_m,
        block_n=block_n,
        num_splits=num_splits,
        num_warps=num_warps,
        num_stages=num_stages,
    ).cpu()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    ref = tree_attention_ref(q, k, v, cache_len, mask)
    torch.testing.assert_close(ref.double(), want, rtol=1e-5, atol=1e-5)


def test_default_config_shapes_the_rows():
    """The row block follows group * N (a SmolLM2 decode step: 3 rows in 16, not 64) up to 64 rows
    (an 81-node tree: 243 rows in four blocks, not one of 256) and the default splits fill the
    GPU only on CUDA."""
    from samgpu.kernels.tree_attention_config import default_config

    cpu = torch.device("cpu")
    assert default_config(64, 1, 9, 3, 64, 2048, cpu).block_m == 16
    assert default_config(64, 8, 9, 3, 64, 2048, cpu).block_m == 32
    assert default_config(64, 16, 9, 3, 64, 2048, cpu).block_m == 64
    assert default_config(1, 81, 9, 3, 64, 2048, cpu).block_m == 64
    assert default_config(1, 81, 32, 32, 128, 2048, cpu).block_m == 64
    assert default_config(1, 1, 9, 3, 64, 2048, cpu).num_splits == 1


def test_split_chunks_follow_the_longest_prefix_of_a_large_batch(device):
    """Split chunks are sized by the batch's longest prefix, read in blocks of BLOCK_B cache_len
    entries: with more sequences than one block and the longest one past it (here the last of
    260), every prefix must still be covered (a span taken from the first block alone, 16, makes
    four chunks of 16 keys and leaves the last sequence's keys 64..99 unread: checked once by
    hand)."""
    from samgpu.kernels.tree_attention import BLOCK_B

    b, hq, hkv, d, max_len = BLOCK_B + 4, 2, 1, 16, 112
    cache_lens = [i % 17 for i in range(b - 1)] + [100]
    trees = [[-1]] * b
    q, k, v, cache_len, mask = make_case(
        b, 1, hq, hkv, d, max_len, cache_lens, trees, torch.float32
    )
    want = path_attention(q, k, v, cache_len, trees, 1 / math.sqrt(d))
    inputs = [t.to(device) for t in (q, k, v, cache_len, mask)]
    got = tree_attention_triton(*inputs, block_n=16, num_splits=4).cpu()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


DEFAULT_HEADS = (9, 3, 64)  # the default model's (SmolLM2-135M) q heads, kv heads, head dim


def untuned_defaults(table: dict, batch_sizes=range(1, 257)) -> set[tuple[str, int, str]]:
    """(method, B, table key) of every default verify geometry of the default model that `table`
    lacks: each registered method at its default budget (ar: one node) for each batch size."""
    from samgpu.drafters import budget_options, method_names
    from samgpu.kernels.tree_attention_config import table_key

    missing = set()
    for method in method_names():
        for b in batch_sizes:
            n = budget_options(method, b).get("max_nodes", 1)
            key = table_key(b, n, *DEFAULT_HEADS)
            if key not in table:
                missing.add((method, b, key))
    return missing


def test_every_default_geometry_of_the_default_model_is_tuned_for_the_h200():
    """An untuned geometry runs the heuristic: the B=1 trees did until 2026-12-01, at 1.7x the
    tuned attention time (profiling/README.md). A budget or bucket change that reaches a geometry
    the H200 table lacks fails here (re-sweep with profiling/bench_attention.py --write-tuning)."""
    from samgpu.kernels.tree_attention_config import table_key, tuned_configs

    table = tuned_configs("NVIDIA H200")
    assert untuned_defaults(table) == set()
    # negative control: without the B=1 tree entry, the tree methods at B=1 are reported
    key = table_key(1, 81, *DEFAULT_HEADS)
    lacking = {k: v for k, v in table.items() if k != key}
    assert ("merged", 1, key) in untuned_defaults(lacking, batch_sizes=(1,))


def test_untuned_heads_or_cards_get_a_note_naming_the_tuning_command():
    """make_runner warns with this on a GPU: the default model's heads on the H200 have a table
    (no note, the control); another card, or other heads on the H200, do not."""
    from samgpu.kernels.tree_attention_config import untuned_note

    assert untuned_note("NVIDIA H200", *DEFAULT_HEADS) is None
    other_card = untuned_note("NVIDIA A100-SXM4-80GB", *DEFAULT_HEADS)
    assert "NVIDIA A100-SXM4-80GB" in other_card and "--heads 9,3,64 --write-tuning" in other_card
    other_heads = untuned_note("NVIDIA H200", 14, 2, 64)
    assert "14 q / 2 kv heads of 64" in other_heads and "--heads 14,2,64" in other_heads


def rope_case(b, n, hq, hkv, d, max_len, slots, dtype, seed=0):
    """qkv rows, RoPE tables at positions slot + depth (random depths), a NaN-filled cache except
    the prefix [0, slot) of each row (so a slot the kernel should write but does not, or a key it
    should not read, shows)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, n, (hq + 2 * hkv) * d, generator=g).to(dtype)
    depth = torch.randint(0, n, (b, n), generator=g)
    positions = torch.tensor(slots)[:, None] + depth
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = positions[..., None].to(torch.float32) * inv_freq
    cos, sin = freqs.cos().contiguous(), freqs.sin().contiguous()
    k = torch.full((b, hkv, max_len, d), float("nan")).to(dtype)
    v = torch.full((b, hkv, max_len, d), float("nan")).to(dtype)
    for i, s in enumerate(slots):
        k[i, :, :s] = torch.randn(hkv, s, d, generator=g).to(dtype)
        v[i, :, :s] = torch.randn(hkv, s, d, generator=g).to(dtype)
    return qkv, cos, sin, torch.tensor(slots, dtype=torch.int32), k, v


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        pytest.param(
            torch.bfloat16,
            marks=pytest.mark.skipif(
                not CUDA, reason="the Triton interpreter computes tl.dot on bf16 wrongly"
            ),
        ),
    ],
)
@pytest.mark.parametrize(
    "n, num_splits, block_m, seen_dead",
    [
        (1, 1, 16, False),
        (5, 3, 16, True),
        (9, 2, 16, False),
        (9, 1, 16, True),
        (20, 2, 64, True),
        (20, 1, 16, False),
    ],
    ids=[
        "decode",
        "split-dead-row",
        "row-blocks-split",
        "row-blocks",
        "tree-blocks",
        "both-blocks",
    ],
)
def test_rope_fused_equals_rope_kv_then_attention(dtype, n, num_splits, block_m, seen_dead, device):
    """The fused launch gives the bits of rope_kv_triton then tree_attention_triton (same key
    blocks; both rotate with rope_kv.rope_rows): the output and every cache slot (the nodes'
    rotated k and v at slot + j, nothing else touched). GQA 3 q heads per kv head (2 of them) with
    N = 9 makes 27 rows a kv head: two row blocks of 16, of which only the first writes the cache
    while both attend to the tree; N = 20 takes two tree blocks of ROPE_TREE_BLOCK keys.
    `seen_dead`: row 1's attention reads an empty prefix (a dead slot) while its nodes still go
    to slot + j."""
    from samgpu.kernels.rope_kv import rope_kv_triton
    from samgpu.kernels.rope_tree_attention import rope_tree_attention_triton
    from samgpu.kernels.tree_attention import ROPE_TREE_BLOCK

    b, hkv = 3, 2
    hq, d, max_len = 3 * hkv, 24, 40  # D = 24: padded to 32 columns, the rotation's halves 12
    slots = [17, 9, 0]
    qkv, cos, sin, slot, k, v = rope_case(b, n, hq, hkv, d, max_len, slots, dtype)
    g = torch.Generator().manual_seed(1)
    trees = [random_parents(n, n, g) for _ in range(b)]
    mask = torch.stack([ancestor_mask(p) for p in trees])
    seen = slot.clone()
    if seen_dead:
        seen[1] = 0
    qkv, cos, sin, slot, seen, mask = (t.to(device) for t in (qkv, cos, sin, slot, seen, mask))
    # 16-key blocks: the fused kernel's tree part always takes ROPE_TREE_BLOCK keys at a time, and
    # float32 outputs equal only with the same blocking (the online softmax's rounding).
    cfg = {"num_splits": num_splits, "block_m": block_m, "block_n": ROPE_TREE_BLOCK}

    k_want, v_want = k.clone().to(device), v.clone().to(device)
    q = rope_kv_triton(qkv, cos, sin, slot, k_want, v_want, num_q_heads=hq)
    k_att, v_att = k_want.clone(), v_want.clone()
    if seen_dead:  # unfused: the tree part reads slots seen + j, so give row 1 its nodes there
        k_att[1, :, :n], v_att[1, :, :n] = k_want[1, :, 9 : 9 + n], v_want[1, :, 9 : 9 + n]
    want = tree_attention_triton(q, k_att, v_att, seen, mask, **cfg)

    k_got, v_got = k.clone().to(device), v.clone().to(device)
    got = rope_tree_attention_triton(
        qkv, cos, sin, slot, k_got, v_got, seen, mask, num_q_heads=hq, **cfg
    )
    assert torch.equal(got, want)
    assert torch.equal(k_got.isnan(), k_want.isnan()) and torch.equal(v_got.isnan(), v_want.isnan())
    assert torch.equal(k_got.nan_to_num(), k_want.nan_to_num())
    assert torch.equal(v_got.nan_to_num(), v_want.nan_to_num())
    assert torch.isfinite(got).all()


def test_rope_fused_check_can_fail(device):
    """Negative control for the equality above: the same launch with the RoPE tables of the next
    position gives different outputs and cache slots (the comparison sees a rotation)."""
    from samgpu.kernels.rope_kv import rope_kv_triton
    from samgpu.kernels.rope_tree_attention import rope_tree_attention_triton

    b, n, hq, hkv, d, max_len = 2, 5, 4, 2, 16, 32
    qkv, cos, sin, slot, k, v = rope_case(b, n, hq, hkv, d, max_len, [6, 3], torch.float32)
    mask = torch.stack([ancestor_mask(p) for p in TREES])
    qkv, cos, sin, slot, mask = (t.to(device) for t in (qkv, cos, sin, slot, mask))
    k_want, v_want = k.clone().to(device), v.clone().to(device)
    q = rope_kv_triton(qkv, cos, sin, slot, k_want, v_want, num_q_heads=hq)
    want = tree_attention_triton(q, k_want, v_want, slot, mask)
    shifted = torch.roll(cos, 1, dims=1), torch.roll(sin, 1, dims=1)
    k_got = k.clone().to(device)
    got = rope_tree_attention_triton(
        qkv, *shifted, slot, k_got, v.clone().to(device), slot, mask, num_q_heads=hq
    )
    assert not torch.equal(got, want)
    assert not torch.equal(k_got.nan_to_num(), k_want.nan_to_num())


def test_rope_fused_dispatch_matches_reference(device):
    """`rope_tree_attention` on CPU is rope_kv_ref + tree_attention_ref; the kernel agrees with it
    to rounding (float32) and writes the same cache slots."""
    from samgpu.kernels.rope_tree_attention import rope_tree_attention, rope_tree_attention_triton

    b, n, hq, hkv, d, max_len = 2, 5, 4, 2, 16, 32
    qkv, cos, sin, slot, k, v = rope_case(b, n, hq, hkv, d, max_len, [6, 3], torch.float32)
    mask = torch.stack([ancestor_mask(p) for p in TREES])
    k_ref, v_ref = k.clone(), v.clone()
    ref = rope_tree_attention(qkv, cos, sin, slot, k_ref, v_ref, slot, mask, num_q_heads=hq)
    inputs = [t.to(device) for t in (qkv, cos, sin, slot)]
    k_got, v_got = k.clone().to(device), v.clone().to(device)
    mask_d = mask.to(device)
    got = rope_tree_attention_triton(*inputs, k_got, v_got, inputs[3], mask_d, num_q_heads=hq).cpu()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_got.cpu(), k_ref, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert torch.equal(v_got.cpu().nan_to_num(), v_ref.nan_to_num())
    with pytest.raises(ValueError, match="qkv width"):
        rope_tree_attention_triton(
            inputs[0][..., :-1], *inputs[1:], k_got, v_got, inputs[3], mask_d, num_q_heads=hq
        )


def test_rope_fused_debug_check_refuses_a_prefix_past_the_nodes(device, monkeypatch):
    """Under SAMGPU_DEBUG=1 a prefix reaching past slot_start (the nodes' writes would race with
    other programs' prefix reads) is a ValueError; a prefix ending at or before it is not."""
    from samgpu.kernels.rope_tree_attention import rope_tree_attention_triton

    monkeypatch.setenv("SAMGPU_DEBUG", "1")
    b, n, hq, hkv, d, max_len = 2, 5, 4, 2, 16, 32
    qkv, cos, sin, slot, k, v = rope_case(b, n, hq, hkv, d, max_len, [6, 3], torch.float32)
    mask = torch.stack([ancestor_mask(p) for p in TREES])
    qkv, cos, sin, slot, k, v, mask = (t.to(device) for t in (qkv, cos, sin, slot, k, v, mask))
    ok = torch.tensor([6, 0], dtype=torch.int32, device=device)
    rope_tree_attention_triton(qkv, cos, sin, slot, k, v, ok, mask, num_q_heads=hq)
    past = torch.tensor([6, 4], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="must not exceed slot_start"):
        rope_tree_attention_triton(qkv, cos, sin, slot, k, v, past, mask, num_q_heads=hq)
