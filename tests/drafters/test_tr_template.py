"""The Token Recycling template: the published 80-node, 6-level tree and its best-first prefixes."""

import pytest
import torch

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


def _seed_reference(adj, text, lengths, chunk, snapshot=True):
    """Prompt-bigram seeding, chunk by chunk: within a chunk every write reads the table as it
    was at the chunk's start and the largest (row, position) wins; later chunks overwrite."""
    adj = adj.clone()
    longest = max(lengths)
    for start in range(0, longest - 1, chunk):
        before = adj.clone() if snapshot else adj
        for b, n in enumerate(lengths):
            for i in range(start, min(start + chunk, n - 1)):
                tok, nxt = int(text[b, i]), int(text[b, i + 1])
                adj[tok] = torch.cat([torch.tensor([nxt], dtype=adj.dtype), before[tok][:-1]])
    return adj


@pytest.mark.parametrize("columns", [16, 11])
def test_prompt_bigram_seeding_over_chunks(device, columns):
    """seed_from_text over prompts longer than a chunk (chunk 4, prompts of 11, 0 and 6 tokens in
    a 16-column text buffer, or an 11-column one whose last chunk is padded) equals the chunked
    rule; the chunks' width no longer follows the longest prompt or the buffer's end, which
    changes nothing. Negative control: without the per-chunk snapshot (repeated tokens inside a
    chunk) the reference differs."""
    from samgpu.drafters.parts.recycling import TokenRecyclingTable

    V = 12
    g = torch.Generator().manual_seed(5)
    table = TokenRecyclingTable(V, device)
    table.adj.copy_(torch.randint(0, V, (V, 8), generator=g, dtype=torch.int32))
    start_adj = table.adj.cpu().clone()
    lengths = [11, 0, 6]
    text = torch.full((3, columns), -1, dtype=torch.int32)
    for b, n in enumerate(lengths):
        text[b, :n] = torch.randint(0, 4, (n,), generator=g)  # few ids: repeats in every chunk
    want = _seed_reference(start_adj, text, lengths, 4)
    lens = torch.tensor(lengths, dtype=torch.int32)
    table.seed_from_text(text.to(device), lens.to(device), max(lengths), chunk=4)
    assert torch.equal(table.adj.cpu(), want)
    assert not torch.equal(_seed_reference(start_adj, text, lengths, 4, snapshot=False), want)


def test_prompt_seeding_shapes_do_not_follow_prompt_length(device, monkeypatch):
    """The seeding's kernel sees chunks of one width (and stride) whatever the longest prompt:
    Triton specialises on sizes and strides, so a width that followed the prompt compiled a new
    variant in the middle of a run. Prompts of 3, 6 and 9 tokens, chunk 4, a 12-column buffer:
    every call gets [R, 4] tokens; so does the buffer's last chunk (9 -> 11 columns: 2), padded.
    Negative control: unpadded, that chunk is [2, 2]."""
    from samgpu.drafters.parts import recycling

    seen = []
    real = recycling.token_recycling_update

    def spy(adj, toks, rows, num_valid, winner):
        seen.append((tuple(toks.shape), toks.stride(), tuple(rows.shape)))
        return real(adj, toks, rows, num_valid, winner)

    monkeypatch.setattr(recycling, "token_recycling_update", spy)
    table = recycling.TokenRecyclingTable(20, device)
    text = torch.randint(0, 20, (2, 11), dtype=torch.int32).to(device)
    for n in (3, 6, 9, 11):
        table.seed_from_text(text, torch.tensor([n, 2], dtype=torch.int32).to(device), n, chunk=4)
    assert len(seen) == 1 + 2 + 2 + 3
    assert {s for s in seen} == {((2, 4), (4, 1), (2, 4, 8))}, seen
    unpadded = text[:, 8:10].contiguous()
    assert (tuple(unpadded.shape), unpadded.stride()) != seen[-1][:2]
