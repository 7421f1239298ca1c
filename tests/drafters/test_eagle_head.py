"""The EAGLE head's incremental inference (samgpu/drafters/parts/eagle_draft.py: start, catch-up,
expansion, all through samgpu's LlamaRunner and the head's KV cache) equals `EagleHead.forward`
over the whole sequence of pairs (float32): the proof of the cache bookkeeping.

A tiny random target gives embed / lm_head; the pairs' hidden states are random (the head does not
care where they come from). Slots are admitted out of order and one is refilled mid-run; steps
accept random paths of random trees, cut their emitted tokens (num_new 0 = a finished slot) and
alternate with plain one-node steps; every step first proposes, so the expansion's writes past the
cache must be overwritten by the catch-up."""

from __future__ import annotations

import pytest
import torch

from samgpu.drafters.parts.eagle_draft import EagleDraft
from samgpu.drafters.parts.eagle_model import EagleHead, head_config_from_target
from samgpu.drafters.protocol import NewRequests
from samgpu.types import NO_PARENT, PAD_TOKEN, DecodeState, DraftTree, StepOutput, VerifyOutput

B, SEQ, TOPK, DEPTH, NODES, K = 3, 72, 3, 4, 16, 5
TOL = dict(rtol=1e-5, atol=1e-5)  # fp32; SDPA reference vs transformers' eager attention


def tiny_head(seed: int = 1) -> EagleHead:
    from tests.decoding.conftest import tiny_model

    target = tiny_model("llama")
    embed = target.model.embed_tokens.weight.detach()
    lm_head = target.lm_head.weight.detach()
    head = EagleHead(head_config_from_target(target.config), embed, lm_head)
    head.reset_parameters(seed)
    with torch.no_grad():  # transformers' 0.02 init is nearly the identity: make the layer matter
        for name, p in head.trainable().items():
            if not name.endswith("norm.weight") and "layernorm" not in name:
                p.mul_(10)
    return head.eval()


def decode_state(text: torch.Tensor) -> DecodeState:
    R, L = text.shape

    def i32(fill=0):
        return torch.full((R,), fill, dtype=torch.int32)

    return DecodeState(
        root=i32(),
        cache_len=i32(),
        text=text,
        text_len=i32(),
        prompt_len=i32(),
        num_generated=i32(),
        max_new_tokens=i32(),
        finished=torch.zeros(R, dtype=torch.bool),
    )


@torch.no_grad()
def reference_g(head, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """g of the last pair of the sequence (tokens [T] = x[p+1], hidden [T, H] = f[p])."""
    return head(tokens[None].long(), hidden[None])[0, -1]


class Sim:
    """Token and hidden-state sequences per slot, the pairs committed so far and the runtime."""

    def __init__(self, head, gen):
        self.head = head
        H = head.fields["hidden_size"]
        self.x = torch.randint(0, 128, (B, SEQ), generator=gen, dtype=torch.int32)
        self.f = torch.randn(B, SEQ, H, generator=gen)
        self.pairs = [0] * B
        self.draft = EagleDraft(
            head, max_reqs=B, max_len=SEQ, max_nodes=NODES, topk=TOPK, depth=DEPTH, path_slots=K
        )

    def admit(self, rows: list[int], lengths: list[int], gen) -> None:
        text = torch.full((B, SEQ), PAD_TOKEN, dtype=torch.int32)
        lens = torch.zeros(B, dtype=torch.int32)
        width = max(lengths) - 1
        hidden = torch.randn(len(rows), width, self.f.shape[2], generator=gen)  # pads: noise
        for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
            text[r, :n] = self.x[r, :n]
            lens[r] = n
            hidden[i, : n - 1] = self.f[r, : n - 1]
            self.pairs[r] = n - 1
        new = NewRequests(torch.tensor(rows), lens, max(lengths), hidden=hidden)
        self.draft.start(decode_state(text), new)

    def check_root_feat(self) -> None:
        for b in range(B):
            c = self.pairs[b]
            got = self.draft.root_feat[b]
            if c == 0:
                assert torch.equal(got, torch.zeros_like(got))
            else:
                want = reference_g(self.head, self.x[b, 1 : c + 1], self.f[b, :c])
                torch.testing.assert_close(got, want, **TOL)
        assert self.draft.cache.cache_len.tolist() == self.pairs

    def check_expansion(self) -> None:
        """Every expansion slot's output = the head over the committed pairs + its root path."""
        d = self.draft
        T, k = d.num_slots, d.topk
        for b in range(B):
            c = self.pairs[b]
            for s in range(T):
                path = d._ancestors[b, s, :T].nonzero()[:, 0]
                assert path[-1] == s and len(path) == s // k + 1
                if len(path) == 1:
                    torch.testing.assert_close(d._hidden_in[b, s], d.root_feat[b], **TOL)
                else:
                    want_in = d._hidden_out[b, path[-2]]
                    torch.testing.assert_close(d._hidden_in[b, s], want_in, **TOL)
                tokens = torch.cat([self.x[b, 1 : c + 1], d._tokens[b, path].to(torch.int32)])
                hidden = torch.cat([self.f[b, :c], d._hidden_in[b, path]])
                want = reference_g(self.head, tokens, hidden)
                torch.testing.assert_close(d._hidden_out[b, s], want, **TOL)

    def step(self, gen, *, plain: bool) -> None:
        """A verified step: random accepted paths, emitted tokens cut at random."""
        N, KS = (1, 1) if plain else (NODES, K)
        H = self.f.shape[2]
        accepted = torch.full((B, KS), NO_PARENT, dtype=torch.int32)
        new_tokens = torch.full((B, KS), PAD_TOKEN, dtype=torch.int32)
        num_new = torch.zeros(B, dtype=torch.int32)
        hidden = torch.randn(B, N, H, generator=gen)  # nodes off the path: noise
        start_len = torch.tensor(self.pairs, dtype=torch.int32)
        for b in range(B):
            a = int(torch.randint(0, KS, (1,), generator=gen))
            nodes = [0] + sorted(torch.randperm(N - 1, generator=gen)[:a].add(1).tolist())
            accepted[b, : a + 1] = torch.tensor(nodes)
            n = int(torch.randint(0, a + 2, (1,), generator=gen))  # 0: finished / cut
            c = self.pairs[b]
            n = min(n, SEQ - 2 - c)
            new_tokens[b, :n] = self.x[b, c + 1 : c + 1 + n]
            num_new[b] = n
            for i in range(n):
                hidden[b, nodes[i]] = self.f[b, c + i]
            self.pairs[b] = c + n
        verify = VerifyOutput.empty(B, N, KS - 1, "cpu")
        verify.accepted_nodes.copy_(accepted)
        tree = DraftTree.empty(B, N, "cpu")
        logits = torch.zeros(B, N, 1)
        step = StepOutput(tree, logits, verify, start_len, new_tokens, num_new, hidden)
        self.draft.update(step)


@pytest.fixture(scope="module")
def head():
    return tiny_head()


def test_incremental_equals_full_forward(head):
    gen = torch.Generator().manual_seed(5)
    sim = Sim(head, gen)
    sim.admit([2, 0], [11, 6], gen)  # out of order; slot 1 idle
    sim.admit([1], [1], gen)  # a one-token prompt: no pair yet
    sim.check_root_feat()
    for i in range(10):
        tree = DraftTree.empty(B, NODES, "cpu")
        sim.draft.propose(torch.zeros(B, dtype=torch.int32), tree)
        if i in (0, 3, 9):
            sim.check_expansion()
        sim.step(gen, plain=i % 4 == 3)
        sim.check_root_feat()
        if i == 5:  # slot 0 refilled mid-run (continuous batching)
            sim.admit([0], [9], gen)
            sim.check_root_feat()
    assert min(sim.pairs) > 8  # the run went somewhere


def test_first_drafts_are_the_heads_top_k(head):
    """Depth-1 nodes are the top-k of lm_head(root_feat); the tree is valid and full."""
    gen = torch.Generator().manual_seed(7)
    sim = Sim(head, gen)
    sim.admit([0, 1, 2], [5, 8, 3], gen)
    tree = DraftTree.empty(B, NODES, "cpu")
    roots = torch.tensor([4, 5, 6], dtype=torch.int32)
    sim.draft.propose(roots, tree)
    assert tree.tokens[:, 0].tolist() == roots.tolist()
    assert tree.num_nodes.tolist() == [NODES] * B
    for b in range(B):
        logits = head.logits(sim.draft.root_feat[b])
        top = set(logits.topk(TOPK).indices.tolist())
        first = {int(t) for t, p in zip(tree.tokens[b], tree.parents[b], strict=True) if p == 0}
        assert first <= top and tree.tokens[b, 1].item() == int(logits.argmax())
        pars = tree.parents[b].tolist()
        assert all(0 <= p < i for i, p in enumerate(pars) if i > 0)
