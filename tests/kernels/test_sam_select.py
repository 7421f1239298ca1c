"""sam_select: draft source and chain node budget per sequence. Golden cases from the paper's rule
first (written out by hand), then a sweep of all length pairs against the reference."""

import pytest
import torch

from samgpu import types
from samgpu.kernels import sam_select as sel
from samgpu.kernels.sam_select import (
    SOURCE_DYNAMIC,
    SOURCE_FALLBACK,
    SOURCE_NONE,
    SOURCE_STATIC,
    SamSelectConfig,
    sam_select,
    sam_select_ref,
    sam_select_triton,
)
from tests.kernels._sam_common import i32

IMPLS = [pytest.param(sam_select_triton, id="triton"), pytest.param(sam_select_ref, id="ref")]


def test_source_codes_match_types():
    assert (sel.SOURCE_NONE, sel.SOURCE_STATIC, sel.SOURCE_DYNAMIC, sel.SOURCE_FALLBACK) == (
        types.SOURCE_NONE,
        types.SOURCE_STATIC,
        types.SOURCE_DYNAMIC,
        types.SOURCE_FALLBACK,
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_threshold_rule(impl, device):
    """sam+tr defaults (l_bias 5, l_threshold 5, n_predicts 40):
    static 12, dyn 6 -> biased static 7 > 6: static, 40 nodes;
    static 8, dyn 3 -> max(3, 3) < 5: fallback (1 node: the root, the TR tree fills the rest);
    static 10, dyn 5 -> tie 5 = 5 >= 5: dynamic;
    static 0, dyn 4 -> below the threshold: fallback; static 0, dyn 5: dynamic."""
    static = i32([12, 8, 10, 0, 0]).to(device)
    dyn = i32([6, 3, 5, 4, 5]).to(device)
    source, nodes = impl(static, dyn, SamSelectConfig())
    assert source.tolist() == [
        SOURCE_STATIC,
        SOURCE_FALLBACK,
        SOURCE_DYNAMIC,
        SOURCE_FALLBACK,
        SOURCE_DYNAMIC,
    ]
    assert nodes.tolist() == [40, 1, 40, 1, 40]


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_sam_only_rule(impl, device):
    """sam alone (official samd_sam_only: l_bias 0, no threshold, nodes = min(60, 1 + 4 len)):
    static 2, dyn 2 -> dynamic (ties), 9 nodes; static 3, dyn 1 -> static, 13 nodes;
    static 20, dyn 0 -> static, min(60, 81) = 60; both 0 -> no draft (SOURCE_NONE, root only)."""
    static = i32([2, 3, 20, 0]).to(device)
    dyn = i32([2, 1, 0, 0]).to(device)
    source, nodes = impl(static, dyn, SamSelectConfig.sam_only())
    assert source.tolist() == [SOURCE_DYNAMIC, SOURCE_STATIC, SOURCE_STATIC, SOURCE_NONE]
    assert nodes.tolist() == [9, 13, 60, 1]


@pytest.mark.parametrize("impl", IMPLS)
def test_missing_automata(impl, device):
    """No static automaton: static length counts as 0 (official NullStaticSAM), so the dynamic one
    needs dyn >= l_threshold; no dynamic automaton: it is never chosen, even at a tie."""
    dyn = i32([4, 5]).to(device)
    source, _ = impl(None, dyn, SamSelectConfig())
    assert source.tolist() == [SOURCE_FALLBACK, SOURCE_DYNAMIC]
    static = i32([9, 10]).to(device)
    source, _ = impl(static, None, SamSelectConfig())
    assert source.tolist() == [SOURCE_FALLBACK, SOURCE_STATIC]
    source, nodes = impl(i32([0, 1]).to(device), None, SamSelectConfig.sam_only())
    assert source.tolist() == [SOURCE_NONE, SOURCE_STATIC] and nodes.tolist() == [1, 5]


@pytest.mark.parametrize("num_reqs", [1, 3, 8, 300])
@pytest.mark.parametrize(
    "config",
    [
        SamSelectConfig(),
        SamSelectConfig.sam_only(),
        SamSelectConfig(mode="longest", l_bias=3, alpha=2.5, max_predicts=17),
        SamSelectConfig(mode="static", n_predicts=7),
        SamSelectConfig(mode="dynamic", n_predicts=9),
        SamSelectConfig(l_bias=-2, l_threshold=0),
    ],
    ids=["sam+tr", "sam", "longest-custom", "static", "dynamic", "neg-bias"],
)
def test_random_vs_reference(num_reqs, config, device):
    """Random length pairs (0..30) in every mode, out= buffers reused; Triton == reference. 300
    sequences span several programs of BLOCK_B."""
    gen = torch.Generator().manual_seed(num_reqs)
    static = torch.randint(0, 31, (num_reqs,), generator=gen, dtype=torch.int32).to(device)
    dyn = torch.randint(0, 31, (num_reqs,), generator=gen, dtype=torch.int32).to(device)
    out = (torch.full_like(static, -7), torch.full_like(static, -7))
    got = sam_select_triton(static, dyn, config, out=out)
    want = sam_select_ref(static, dyn, config)
    assert got[0] is out[0] and got[1] is out[1]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_dispatch_and_bad_inputs():
    assert sam_select(i32([12]), i32([6]), SamSelectConfig())[0].tolist() == [SOURCE_STATIC]
    with pytest.raises(ValueError, match="needs static_len, dyn_len or both"):
        sam_select_triton(None, None, SamSelectConfig())
    with pytest.raises(ValueError, match="dyn_len"):
        sam_select_triton(i32([1, 2]), i32([1]), SamSelectConfig())
    with pytest.raises(ValueError, match="mode='longer'"):
        SamSelectConfig(mode="longer")
    with pytest.raises(ValueError, match="n_predicts=0"):
        SamSelectConfig(n_predicts=0)
    with pytest.raises(ValueError, match="alpha"):
        SamSelectConfig(alpha=-1.0)
