"""kernels/eagle_expand.py: the Triton kernel (interpreter on CPU) against its torch reference,
every output compared exactly (integers, and floats bit for bit), on random inputs with ties,
-inf, -0.0 and NaN; the module docstring's example; and a negative control (ties broken to the
higher column instead of the lower give another frontier on the same inputs)."""

from __future__ import annotations

import pytest
import torch

from samgpu.kernels.eagle_expand import (
    CandidateColumns,
    ExpansionSlots,
    FrontierBuffers,
    eagle_expand_ref,
    eagle_expand_triton,
)
from tests.conftest import DEVICE


def make_inputs(B: int, k: int, depth_slot: int, *, H: int = 12, C: int | None = None, seed=0,
                dtype=torch.float32):  # fmt: skip
    """child_lp with ties and specials, a frontier at slots lo .. lo + k, and every buffer."""
    g = torch.Generator().manual_seed(seed)
    T = (depth_slot + 2) * k
    C = C or (k + (depth_slot + 2) * k * k)
    lp = -torch.randint(0, 4, (B, k, k), generator=g).float() / 2  # many ties, some -0.0
    lp[0, 0, 0] = float("-inf")
    lp[-1, -1, -1] = float("nan")
    lp[0, 1 % k, 0] = -0.0
    lp[1 % B, 0, 0] = 0.25  # a rounding-positive log-prob, clamped to 0
    tok = torch.randint(0, 50, (B, k, k), generator=g)
    scores_in = -torch.randint(0, 3, (B, k), generator=g).float()
    scores_in[0, 0] = -0.0
    front = FrontierBuffers(
        scores_in,
        torch.randint(0, C, (B, k), generator=g),
        torch.full((B, k), 7.0),
        torch.full((B, k), -7, dtype=torch.int64),
    )
    cands = CandidateColumns(
        torch.full((B, C), -1, dtype=torch.int64),
        torch.full((B, C), 9.0),
        torch.full((B, C), -2, dtype=torch.int64),
    )
    slots = ExpansionSlots(
        torch.full((B, T), -3, dtype=torch.int64),
        torch.full((B, T, H), 5.0).to(dtype),
        torch.randn(B, T + 1, H, generator=g).to(dtype),
        torch.rand(B, T, T, generator=g) < 0.3,
    )
    return tuple(to_device(x) for x in (lp, tok, front, cands, slots))


def to_device(x):
    """A tensor or a dataclass of tensors on the tests' device (the kernel's GPU when there is
    one; the interpreter reads CPU tensors)."""
    if isinstance(x, torch.Tensor):
        return x.to(DEVICE)
    return type(x)(*(to_device(getattr(x, f)) for f in x.__dataclass_fields__))


def clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    return type(x)(*(clone(getattr(x, f)) for f in x.__dataclass_fields__))


def outputs(front, cands, slots) -> list[torch.Tensor]:
    return [front.scores_out, front.cand_out, cands.tokens, cands.scores, cands.parents,
            slots.tokens, slots.hidden_in, slots.ancestors]  # fmt: skip


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_floating_point():
        a, b = a.float().view(torch.int32), b.float().view(torch.int32)
    return torch.equal(a, b)


def run_both(lp, tok, front, cands, slots, base, lo, select):
    got = [clone(front), clone(cands), clone(slots)]
    want = [clone(front), clone(cands), clone(slots)]
    eagle_expand_triton(lp, tok, got[0], got[1], base, got[2], lo, select)
    eagle_expand_ref(lp, tok, want[0], want[1], base, want[2], lo, select)
    return outputs(*got), outputs(*want)


@pytest.mark.parametrize("select", [True, False])
@pytest.mark.parametrize("B,k,d", [(1, 1, 0), (3, 2, 1), (2, 3, 2), (2, 8, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_reference(B, k, d, select, dtype):
    lp, tok, front, cands, slots = make_inputs(B, k, d, seed=B * 100 + k * 10 + d, dtype=dtype)
    base, lo = k + d * k * k, d * k
    got, want = run_both(lp, tok, front, cands, slots, base, lo, select)
    for g, w in zip(got, want, strict=True):
        assert same_bits(g, w)


def test_docstring_example():
    lp, tok, front, cands, slots = make_inputs(1, 2, 0, C=6)
    lp.copy_(torch.tensor([[[-0.2, -1.0], [-0.1, -0.3]]]))
    tok.copy_(torch.tensor([[[3, 4], [5, 6]]]))
    front.scores_in.copy_(torch.tensor([[-0.1, -2.5]]))
    front.cand_in.copy_(torch.tensor([[0, 1]]))
    eagle_expand_triton(lp, tok, front, cands, 2, slots, 0, True)
    assert cands.tokens[0, 2:].tolist() == [3, 4, 5, 6]
    assert cands.parents[0, 2:].tolist() == [0, 0, 1, 1]
    want = torch.tensor([-0.1, -2.5]).repeat_interleave(2) + torch.tensor([-0.2, -1.0, -0.1, -0.3])
    want = want.to(cands.scores.device)
    assert torch.equal(cands.scores[0, 2:], want)
    assert front.cand_out[0].tolist() == [2, 3] and slots.tokens[0, 2:4].tolist() == [3, 4]
    assert torch.equal(front.scores_out[0], want[:2])
    assert torch.equal(slots.hidden_in[0, 2], slots.hidden_out[0, 0])
    assert torch.equal(slots.hidden_in[0, 3], slots.hidden_out[0, 0])
    assert slots.ancestors[0, 2, 2] and slots.ancestors[0, 3, 3] and not slots.ancestors[0, 2, 3]


def test_negative_control_other_tie_break_differs():
    """The same selection with ties broken to the higher column picks another frontier on these
    tie-heavy inputs: the exact comparison above can tell tie-breaks apart."""
    k = 8
    lp, tok, front, cands, slots = make_inputs(2, k, 3, seed=5)
    base, lo = k + 3 * k * k, 3 * k
    eagle_expand_triton(lp, tok, front, cands, base, slots, lo, True)
    score = (front.scores_in[..., None] + lp.clamp(max=0.0)).flatten(1)
    key = torch.where(score.isnan(), float("-inf"), score)
    lower = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    higher = k * k - 1 - torch.sort(key.flip(1), dim=1, descending=True, stable=True).indices[:, :k]
    assert torch.equal(front.cand_out - base, lower)
    assert not torch.equal(front.cand_out - base, higher)


def test_bad_inputs_are_named():
    lp, tok, front, cands, slots = make_inputs(1, 2, 0)
    with pytest.raises(ValueError, match="child_lp must be"):
        eagle_expand_ref(lp[0], tok, front, cands, 0, slots, 0, True)
    with pytest.raises(ValueError, match="outside the candidates"):
        eagle_expand_ref(lp, tok, front, cands, cands.tokens.shape[1], slots, 0, True)
    with pytest.raises(ValueError, match="outside the"):
        eagle_expand_ref(lp, tok, front, cands, 0, slots, slots.tokens.shape[1], True)
