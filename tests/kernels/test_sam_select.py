"""The draft-source selection rule that sam_draft_chain applies per sequence (kernels/sam_draft.py;
its Triton helper `_sam_jit.select_source` is compared with this Python twin through
sam_draft_chain's Triton == reference tests). Golden cases of the paper's rule, written out by
hand, and config validation."""

import pytest

from samgpu.kernels import _sam_jit as J
from samgpu.kernels.sam_draft import SamSelectConfig
from samgpu.kernels.types import (
    SOURCE_DYNAMIC,
    SOURCE_FALLBACK,
    SOURCE_NONE,
    SOURCE_STATIC,
    SOURCE_STORE,
)

NO_DYN = -1  # dyn_len standing for "no dynamic automaton"


def select(static: list[int], dyn: list[int], config: SamSelectConfig):
    c = config
    picks = [
        J.select_source_py(
            s, d, c.mode_id, c.l_bias, c.l_threshold, c.n_predicts, c.max_predicts, c.alpha
        )
        for s, d in zip(static, dyn, strict=True)
    ]
    return [p[0] for p in picks], [p[1] for p in picks]


def test_golden_threshold_rule():
    """sam+tr defaults (l_bias 5, l_threshold 5, n_predicts 40):
    static 12, dyn 6 -> biased static 7 > 6: static, 40 nodes;
    static 8, dyn 3 -> max(3, 3) < 5: fallback (1 node: the root, the TR tree fills the rest);
    static 10, dyn 5 -> tie 5 = 5 >= 5: dynamic;
    static 0, dyn 4 -> below the threshold: fallback; static 0, dyn 5: dynamic."""
    source, nodes = select([12, 8, 10, 0, 0], [6, 3, 5, 4, 5], SamSelectConfig())
    assert source == [
        SOURCE_STATIC,
        SOURCE_FALLBACK,
        SOURCE_DYNAMIC,
        SOURCE_FALLBACK,
        SOURCE_DYNAMIC,
    ]
    assert nodes == [40, 1, 40, 1, 40]


def test_golden_sam_only_rule():
    """sam alone (official samd_sam_only: l_bias 0, no threshold, nodes = min(60, 1 + 4 len)):
    static 2, dyn 2 -> dynamic (ties), 9 nodes; static 3, dyn 1 -> static, 13 nodes;
    static 20, dyn 0 -> static, min(60, 81) = 60; both 0 -> no draft (SOURCE_NONE, root only)."""
    source, nodes = select([2, 3, 20, 0], [2, 1, 0, 0], SamSelectConfig.sam_only())
    assert source == [SOURCE_DYNAMIC, SOURCE_STATIC, SOURCE_STATIC, SOURCE_NONE]
    assert nodes == [9, 13, 60, 1]


def test_missing_automata():
    """No static automaton: static length counts as 0 (official NullStaticSAM), so the dynamic one
    needs dyn >= l_threshold; no dynamic automaton: it is never chosen."""
    assert select([0, 0], [4, 5], SamSelectConfig())[0] == [SOURCE_FALLBACK, SOURCE_DYNAMIC]
    assert select([9, 10], [NO_DYN] * 2, SamSelectConfig())[0] == [SOURCE_FALLBACK, SOURCE_STATIC]
    source, nodes = select([0, 1], [NO_DYN] * 2, SamSelectConfig.sam_only())
    assert source == [SOURCE_NONE, SOURCE_STATIC] and nodes == [1, 5]


def test_config_validation():
    with pytest.raises(ValueError, match="mode='longer'"):
        SamSelectConfig(mode="longer")
    with pytest.raises(ValueError, match="n_predicts=0"):
        SamSelectConfig(n_predicts=0)
    with pytest.raises(ValueError, match="alpha"):
        SamSelectConfig(alpha=-1.0)
    assert SamSelectConfig(mode="longest", max_predicts=17).max_chain_nodes == 17


def select3(static, dyn, store, config: SamSelectConfig):
    c = config
    picks = [
        J.select_source_py(
            s,
            d,
            c.mode_id,
            c.l_bias,
            c.l_threshold,
            c.n_predicts,
            c.max_predicts,
            c.alpha,
            st,
            c.store_bias,
        )  # fmt: skip
        for s, d, st in zip(static, dyn, store, strict=True)
    ]
    return [p[0] for p in picks], [p[1] for p in picks]


def test_golden_three_source_rule():
    """sam+tr (l_bias 5, l_threshold 5) with a store (store_bias 0): candidates dyn, store,
    static - 5; ties: dynamic, then store, then static.
    static 12, dyn 3, store 7 -> 7 = 7: the store (before static); static 20, store 7 -> static 15;
    dyn 6, store 6 -> dynamic; store 4, others shorter -> fallback; store 5 -> store."""
    source, nodes = select3([12, 20, 0, 0, 0], [3, 3, 6, 2, 2], [7, 7, 6, 4, 5], SamSelectConfig())
    assert source == [SOURCE_STORE, SOURCE_STATIC, SOURCE_DYNAMIC, SOURCE_FALLBACK, SOURCE_STORE]
    assert nodes == [40, 40, 40, 1, 40]
    source, nodes = select3([0, 0], [2, 2], [5, 5], SamSelectConfig(store_bias=1))
    assert source == [SOURCE_FALLBACK, SOURCE_FALLBACK]  # 5 - 1 < 5


def test_golden_three_source_longest_rule():
    """sam (longest, l_bias 0, nodes = min(60, 1 + 4 len)): store 3 vs dyn 2 -> store, 13 nodes;
    store 2 = dyn 2 -> dynamic; store 0, dyn 0, static 0 -> no draft."""
    source, nodes = select3([1, 0, 0], [2, 2, 0], [3, 2, 0], SamSelectConfig.sam_only())
    assert source == [SOURCE_STORE, SOURCE_DYNAMIC, SOURCE_NONE] and nodes == [13, 9, 1]


def test_absent_store_is_the_two_source_rule():
    """store_len -1 (no store) gives exactly the two-source rule on a grid of lengths, in every
    mode and bias; negative control: a present store of length 9 changes some picks."""
    grid = [(s, d) for s in range(0, 12, 3) for d in (-1, 0, 2, 5, 9)]
    for cfg in (
        SamSelectConfig(),
        SamSelectConfig.sam_only(),
        SamSelectConfig(l_threshold=0, store_bias=-3),
        SamSelectConfig(mode="static"),
        SamSelectConfig(mode="dynamic"),
    ):
        two = select([s for s, _ in grid], [d for _, d in grid], cfg)
        assert select3([s for s, _ in grid], [d for _, d in grid], [-1] * len(grid), cfg) == two
        if cfg.mode in ("threshold", "longest"):
            three = select3([s for s, _ in grid], [d for _, d in grid], [9] * len(grid), cfg)
            assert three != two
