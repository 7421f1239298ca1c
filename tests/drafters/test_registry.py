"""build_drafter / METHODS / default_budget: names, option validation, budgets."""

import pytest

from samgpu.drafters import METHODS, build_drafter, default_budget

COMMON = dict(vocab_size=50, max_reqs=2, max_len=64, device="cpu")


def test_methods_listed():
    assert set(METHODS) >= {"ar", "pld", "tr", "sam", "sam+tr", "sam-tree", "merged", "test"}


def test_unknown_method_names_valid_ones():
    with pytest.raises(ValueError, match="valid.*sam\\+tr"):
        build_drafter("eagle", **COMMON)


@pytest.mark.parametrize("method", ["pld", "tr", "sam", "sam+tr", "sam-tree", "merged"])
def test_unknown_option_names_valid_ones(method):
    with pytest.raises(ValueError, match="unknown option.*valid"):
        build_drafter(method, **COMMON, bogus=1)


def test_pld_and_tr_shapes():
    pld = build_drafter("pld", **COMMON, num_draft=5)
    assert (pld.max_nodes, pld.max_depth) == (6, 5)
    tr = build_drafter("tr", **COMMON)
    assert (tr.max_nodes, tr.max_depth) == (81, 6)
    small = build_drafter("tr", **COMMON, max_nodes=8)
    assert small.max_nodes == 8 and small.max_depth == 3


def test_default_budget_shrinks_with_batch():
    sizes = [default_budget("merged", b) for b in (1, 2, 4, 8, 16, 32, 64)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] >= 64 and sizes[-1] <= 8
    assert default_budget("ar", 1) == 1
    with pytest.raises(ValueError):
        default_budget("nope", 1)


def test_sam_methods_budget_option_sets_tree_width():
    """max_nodes (the batch budget) caps the tree width of every SAM method; sam+tr keeps the
    chain within it too (n_predicts 40 -> 16)."""
    for method in ("sam", "sam+tr", "sam-tree", "merged"):
        d = build_drafter(method, **COMMON, max_nodes=16)
        assert d.max_nodes == 16, method
        assert 0 <= d.max_depth < 16
    assert build_drafter("sam+tr", **COMMON, max_nodes=16).config.n_predicts == 16
    assert build_drafter("sam", **COMMON).max_nodes == 60


def test_budget_options_only_for_methods_with_a_tree_width():
    """pld sizes its chain with num_draft and ar has no draft: no max_nodes for them; the tree
    methods and sam get default_budget's width, which build_drafter accepts."""
    from samgpu.drafters import budget_options

    assert budget_options("ar", 1) == {} and budget_options("pld", 8) == {}
    for method in ("tr", "sam", "sam+tr", "sam-tree", "merged"):
        opts = budget_options(method, 16)
        assert opts == {"max_nodes": default_budget(method, 16)}
        drafter = build_drafter(
            method, vocab_size=64, max_reqs=1, max_len=128, device="cpu", **opts
        )
        assert drafter.max_nodes == opts["max_nodes"]
    with pytest.raises(ValueError):
        budget_options("nope", 1)
