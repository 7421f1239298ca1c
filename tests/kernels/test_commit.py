"""commit: emitted tokens -> text, lengths, EOS / max_new_tokens cut, finished, root. Triton
(interpreter on CPU) against the reference, exact equality of every state field."""

import pytest
import torch

from samgpu.kernels.commit import commit, commit_ref, commit_triton
from samgpu.kernels.types import PAD_TOKEN, DecodeState, DraftTree, StepOutput, VerifyOutput

IMPLS = [pytest.param(commit_triton, id="triton"), pytest.param(commit_ref, id="ref")]


def _bundles(tokens, accepted, num_accepted, bonus, state: dict) -> tuple[DecodeState, StepOutput]:
    """The loose tensors of a case as the DecodeState / StepOutput that commit takes (views)."""
    fields = {k: state[k] for k in ("root", "cache_len", "text", "text_len", "num_generated")}
    decode = DecodeState(
        **fields,
        prompt_len=state["text_len"].clone(),
        max_new_tokens=state["max_new_tokens"],
        finished=state["finished"],
    )
    tree = DraftTree(tokens, torch.full_like(tokens, -1), torch.ones_like(num_accepted))
    ver = VerifyOutput(accepted, num_accepted, bonus, torch.zeros_like(tokens, dtype=torch.int64))
    step = StepOutput(
        tree=tree,
        logits=torch.zeros(0),
        verify=ver,
        start_len=state["cache_len"].clone(),
        new_tokens=state["new_tokens"],
        num_new=state["num_new"],
    )
    return decode, step


def _run(impl, tokens, accepted, num_accepted, bonus, eos, **state) -> None:
    impl(*_bundles(tokens, accepted, num_accepted, bonus, state), eos)


X = PAD_TOKEN
NP = -1  # NO_PARENT padding of accepted_nodes


def _i32(x, device="cpu"):
    return torch.tensor(x, dtype=torch.int32, device=device)


def _state(text_rows, max_len, num_generated, max_new_tokens, finished, device):
    text = torch.full((len(text_rows), max_len), X, dtype=torch.int32)
    for b, row in enumerate(text_rows):
        text[b, : len(row)] = _i32(row)
    text_len = _i32([len(r) for r in text_rows])
    return dict(
        text=text.to(device),
        text_len=text_len.to(device),
        cache_len=(text_len - 1).to(device),
        num_generated=_i32(num_generated, device),
        max_new_tokens=_i32(max_new_tokens, device),
        finished=torch.tensor(finished, dtype=torch.bool, device=device),
        root=_i32([r[-1] for r in text_rows], device),
        new_tokens=torch.zeros(len(text_rows), 3, dtype=torch.int32, device=device),
        num_new=torch.zeros(len(text_rows), dtype=torch.int32, device=device),
    )


def _lists(state):
    return {k: v.cpu().tolist() for k, v in state.items()}


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_batch(impl, device):
    """tokens [C=1, X=9, D=2, E=3] with accepted path [0, 2, 3] (D, E) and bonus F=4, EOS ids
    {E, 7}, per row:
    rows 0, 1: EOS = E           -> emit D E, finished, root E;
    row 2: max_new_tokens 2 left -> emits D E (cut), finished;
    row 3: already finished      -> emits nothing, state unchanged;
    row 4: first-token rejection (num_accepted 0) -> emits the bonus 7 only, which is EOS 7.
    Then row 0 again with EOS ids {7}: emits D E F, root F, not finished."""
    tokens = _i32([[1, 9, 2, 3]] * 5, device)
    accepted = _i32([[0, 2, 3]] * 4 + [[0, NP, NP]], device)
    num_accepted = _i32([2, 2, 2, 2, 0], device)
    bonus = _i32([4, 4, 4, 4, 7], device)
    state = _state(
        [[5, 1], [5, 1], [5, 1], [5, 1, 8], [5, 1]],
        max_len=8,
        num_generated=[0, 0, 3, 1, 0],
        max_new_tokens=[10, 10, 5, 10, 10],
        finished=[False, False, False, True, False],
        device=device,
    )
    _run(impl, tokens, accepted, num_accepted, bonus, _i32([3, 7], device), **state)
    got = _lists(state)
    assert got["num_new"] == [2, 2, 2, 0, 1]
    assert got["new_tokens"] == [[2, 3, X], [2, 3, X], [2, 3, X], [X, X, X], [7, X, X]]
    assert got["text"][1] == [5, 1, 2, 3, X, X, X, X]
    assert got["text"][3] == [5, 1, 8, X, X, X, X, X]
    assert got["text_len"] == [4, 4, 4, 3, 3]
    assert got["cache_len"] == [3, 3, 3, 2, 2]
    assert got["num_generated"] == [2, 2, 5, 1, 1]
    assert got["root"] == [3, 3, 3, 8, 7]
    assert got["finished"] == [True, True, True, True, True]

    state = _state([[5, 1]], 8, [0], [10], [False], device)
    _run(impl, tokens[:1], accepted[:1], num_accepted[:1], bonus[:1], _i32([7], device), **state)
    got = _lists(state)
    assert got["new_tokens"] == [[2, 3, 4]] and got["num_new"] == [3]
    assert got["text"] == [[5, 1, 2, 3, 4, X, X, X]] and got["root"] == [4]
    assert got["text_len"] == [5] and got["cache_len"] == [4] and got["num_generated"] == [3]
    assert got["finished"] == [False]


@pytest.mark.parametrize("impl", IMPLS)
def test_no_eos_ids_and_exact_budget(impl, device):
    """No EOS ids at all (empty vector); max_new_tokens reached exactly by the full emission."""
    state = _state([[4]], 6, [1], [4], [False], device)
    _run(
        impl,
        _i32([[4, 5, 6]], device),
        _i32([[0, 1, 2]], device),
        _i32([2], device),
        _i32([7], device),
        torch.zeros(0, dtype=torch.int32, device=device),
        **state,
    )
    got = _lists(state)
    assert got["new_tokens"] == [[5, 6, 7]] and got["finished"] == [True]
    assert got["text"] == [[4, 5, 6, 7, X, X]] and got["num_generated"] == [4]


@pytest.mark.parametrize("num_reqs,max_nodes,k_slots", [(4, 5, 3), (8, 12, 6)])
def test_random_triton_equals_ref(num_reqs, max_nodes, k_slots, device):
    gen = torch.Generator().manual_seed(num_reqs)
    tokens = torch.randint(0, 6, (num_reqs, max_nodes), generator=gen, dtype=torch.int32)
    num_acc = torch.randint(0, k_slots, (num_reqs,), generator=gen, dtype=torch.int32)
    accepted = torch.full((num_reqs, k_slots), NP, dtype=torch.int32)
    for b in range(num_reqs):
        path = sorted(torch.randperm(max_nodes - 1, generator=gen)[: int(num_acc[b])] + 1)
        accepted[b, : len(path) + 1] = torch.tensor([0, *path], dtype=torch.int32)
    bonus = torch.randint(0, 6, (num_reqs,), generator=gen, dtype=torch.int32)
    eos = _i32([5, 2])
    rows = [
        torch.randint(0, 6, (int(n),), generator=gen).tolist()
        for n in torch.randint(1, 5, (num_reqs,), generator=gen)
    ]
    num_gen = torch.randint(0, 4, (num_reqs,), generator=gen).tolist()
    max_new = [g + int(torch.randint(0, 5, (1,), generator=gen)) for g in num_gen]
    fin = (torch.rand(num_reqs, generator=gen) < 0.2).tolist()
    sa = _state(rows, 12, num_gen, max_new, fin, device)
    sb = _state(rows, 12, num_gen, max_new, fin, "cpu")
    sa["new_tokens"] = torch.zeros(num_reqs, k_slots, dtype=torch.int32, device=device)
    sb["new_tokens"] = torch.zeros(num_reqs, k_slots, dtype=torch.int32)
    args = (tokens, accepted, num_acc, bonus, eos)
    _run(commit_triton, *(a.to(device) for a in args), **sa)
    _run(commit_ref, *args, **sb)
    for key in sa:
        assert torch.equal(sa[key].cpu(), sb[key]), key


def test_dispatch_and_bad_shapes():
    state = _state([[4]], 6, [0], [4], [False], "cpu")
    _run(commit, _i32([[4, 5]]), _i32([[0, 1, NP]]), _i32([1]), _i32([7]), _i32([]), **state)
    assert state["text"].tolist() == [[4, 5, 7, X, X, X]]
    with pytest.raises(ValueError, match="new_tokens"):  # (rows strided by K: contiguous)
        bad = dict(state, new_tokens=torch.zeros(1, 6, dtype=torch.int32)[:, ::2])
        _run(commit_ref, _i32([[4, 5]]), _i32([[0, 1, NP]]), _i32([1]), _i32([7]), _i32([]), **bad)
    with pytest.raises(ValueError, match="accepted_nodes"):
        accepted = _i32([[0, 0, 1, 0, NP, 0]])[:, ::2]
        _run(commit_ref, _i32([[4, 5]]), accepted, _i32([1]), _i32([7]), _i32([]), **state)
    with pytest.raises(ValueError, match="finished"):
        bad = dict(state, finished=torch.zeros(1, dtype=torch.int32))
        _run(commit_ref, _i32([[4, 5]]), _i32([[0, 1, NP]]), _i32([1]), _i32([7]), _i32([]), **bad)
