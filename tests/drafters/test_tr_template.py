"""The Token Recycling template: the published 80-node, 6-level tree and its best-first prefixes."""

import pytest

from samgpu.drafters.parts.recycling import TR_TEMPLATE_NODES, TR_TEMPLATE_PATHS, template_tree
from samgpu.types import NO_PARENT


def test_published_template_shape():
    """80 draft nodes + root; level widths 8, 21, 25, 15, 8, 3 (depth 6); ranks < 8; closed under
    prefixes (every node's parent path is in the tree); no duplicates."""
    assert TR_TEMPLATE_NODES == 81
    widths = [sum(len(p) == d for p in TR_TEMPLATE_PATHS) for d in range(1, 7)]
    assert widths == [8, 21, 25, 15, 8, 3]
    assert len(set(TR_TEMPLATE_PATHS)) == 80
    assert all(0 <= r < 8 for p in TR_TEMPLATE_PATHS for r in p)
    paths = set(TR_TEMPLATE_PATHS) | {()}
    assert all(p[:-1] in paths for p in TR_TEMPLATE_PATHS)


@pytest.mark.parametrize("max_nodes", [1, 2, 8, 33, 81, 200])
def test_prefix_is_topological_subtree(max_nodes):
    t = template_tree(max_nodes)
    assert t.num_nodes == min(max_nodes, 81)
    assert t.paths[0] == () and t.parents[0] == NO_PARENT
    for i in range(1, t.num_nodes):
        assert t.parents[i] < i
        assert t.paths[t.parents[i]] == t.paths[i][:-1]
    assert len(set(t.paths)) == t.num_nodes


def test_small_budget_is_best_first():
    """With 4 nodes: root, the top successor, its top successor, then the 2nd successor of the root
    (0.5 > 0.25 > 0.15 under RANK_PRIOR)."""
    assert template_tree(4).paths == ((), (0,), (0, 0), (1,))
