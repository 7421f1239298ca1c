"""A model-free decode loop for drafter tests: the Drafter contract of docs/ARCHITECTURE.md driven
by a deterministic "target model" (an oracle: next token = a function of the context), with greedy
tree verification written out plainly. Every drafter must reproduce the oracle's autoregressive
output exactly (lossless), and the accepted counts measure how well it drafts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from samgpu.drafters.protocol import NewRequests
from samgpu.types import PAD_TOKEN, DecodeState, DraftTree, StepOutput, VerifyOutput

Oracle = Callable[[list[int]], int]  # context -> next token


def markov_oracle(vocab: int, order: int, seed: int) -> Oracle:
    """next = table[last `order` tokens]: a deterministic chain that falls into cycles."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, vocab, (vocab,) * order, generator=g).tolist()

    def oracle(ctx: list[int]) -> int:
        t = table
        for tok in ctx[-order:]:
            t = t[tok]
        return t

    return oracle


def oracle_logits(oracle: Oracle, ctx: list[int], vocab: int) -> torch.Tensor:
    """Distinct logits whose argmax is oracle(ctx) and whose top-k are next, next+1, ... (mod V)."""
    nxt = oracle(ctx)
    return -((torch.arange(vocab) - nxt) % vocab).float()


def autoregressive(oracle: Oracle, prompt: list[int], max_new: int) -> list[int]:
    ctx = list(prompt)
    for _ in range(max_new):
        ctx.append(oracle(ctx))
    return ctx[len(prompt) :]


@dataclass
class SimResult:
    tokens: list[list[int]]
    steps: list[int]  # decode steps per sequence (while unfinished)
    accepted: list[list[int]]  # num_accepted per step per sequence
    sources: list[list[int]]  # last_source per step per sequence (if reported)


def check_tree(tree: DraftTree, root: torch.Tensor) -> None:
    """Contract checks on every proposed tree."""
    B, N = tree.tokens.shape
    assert torch.equal(tree.tokens[:, 0], root), "tokens[:, 0] must be the root"
    for b in range(B):
        n = int(tree.num_nodes[b])
        assert 1 <= n <= N, f"num_nodes {n} outside [1, {N}]"
        par = tree.parents[b].tolist()
        assert par[0] == -1
        assert all(0 <= par[i] < i for i in range(1, n)), f"not topological: {par[:n]}"


def simulate(
    drafter, oracle: Oracle, prompts: list[list[int]], max_new: int, vocab: int, finish=True
):
    """Decode `prompts` to max_new tokens each; at the end (as the engine's collect does)
    `drafter.finish(state, rows)` for every row when `finish`."""
    B = len(prompts)
    max_len = max(len(p) for p in prompts) + max_new + drafter.max_nodes + 1
    text = torch.full((B, max_len), PAD_TOKEN, dtype=torch.int32)
    for b, p in enumerate(prompts):
        text[b, : len(p)] = torch.tensor(p, dtype=torch.int32)
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.int32)
    state = DecodeState(
        root=torch.tensor([p[-1] for p in prompts], dtype=torch.int32),
        cache_len=lens - 1,
        text=text,
        text_len=lens.clone(),
        prompt_len=lens.clone(),
        num_generated=torch.zeros(B, dtype=torch.int32),
        max_new_tokens=torch.full((B,), max_new, dtype=torch.int32),
        finished=torch.zeros(B, dtype=torch.bool),
    )
    N, K = drafter.max_nodes, drafter.max_depth + 1
    tree = DraftTree.empty(B, N, "cpu")
    drafter.start(state, NewRequests.whole_batch(state))
    out: list[list[int]] = [[] for _ in range(B)]
    res = SimResult(out, [0] * B, [[] for _ in range(B)], [[] for _ in range(B)])
    while not bool(state.finished.all()):
        drafter.propose(state, tree)
        check_tree(tree, state.root)
        src = getattr(drafter, "last_source", None)
        logits = torch.zeros(B, N, vocab)
        accepted_nodes = torch.full((B, K), -1, dtype=torch.int32)
        num_accepted = torch.zeros(B, dtype=torch.int32)
        bonus = torch.zeros(B, dtype=torch.int32)
        new_tokens = torch.full((B, K), PAD_TOKEN, dtype=torch.int32)
        num_new = torch.zeros(B, dtype=torch.int32)
        for b in range(B):
            ctx = text[b, : int(state.text_len[b])].tolist()
            tok, par, n = tree.tokens[b].tolist(), tree.parents[b].tolist(), int(tree.num_nodes[b])
            for i in range(N):  # pad nodes get some context too (the runner computes them)
                path, j = [], i
                while j > 0 and i < n:
                    path.append(tok[j])
                    j = par[j]
                logits[b, i] = oracle_logits(oracle, ctx + path[::-1], vocab)
            if bool(state.finished[b]):
                continue
            cur, acc = 0, [0]
            while True:
                want = int(logits[b, cur].argmax())
                kids = [c for c in range(1, n) if par[c] == cur and tok[c] == want]
                if not kids:
                    break
                cur = kids[0]
                acc.append(cur)
            emitted = [tok[c] for c in acc[1:]] + [int(logits[b, cur].argmax())]
            room = max_new - len(out[b])
            emitted = emitted[:room]
            out[b] += emitted
            res.steps[b] += 1
            res.accepted[b].append(len(acc) - 1)
            if src is not None:
                res.sources[b].append(int(src[b]))
            accepted_nodes[b, : len(acc)] = torch.tensor(acc, dtype=torch.int32)
            num_accepted[b] = len(acc) - 1
            bonus[b] = emitted[-1]
            new_tokens[b, : len(emitted)] = torch.tensor(emitted, dtype=torch.int32)
            num_new[b] = len(emitted)
            L = int(state.text_len[b])
            text[b, L : L + len(emitted)] = torch.tensor(emitted, dtype=torch.int32)
            state.text_len[b] = L + len(emitted)
            state.cache_len[b] = L + len(emitted) - 1
            state.root[b] = emitted[-1]
            state.num_generated[b] = len(out[b])
            state.finished[b] = len(out[b]) >= max_new
        verify = VerifyOutput(accepted_nodes, num_accepted, bonus, logits.argmax(-1))
        start_len = state.cache_len - num_new  # cache length when the step began
        step = StepOutput(tree, logits, verify, start_len, new_tokens, num_new)
        state.step = step
        drafter.update(state, step)
    if finish:
        drafter.finish(state, torch.arange(B))
    return res
