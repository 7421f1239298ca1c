"""eagle_expand's buffer checks: the kernel writes row b of the candidates [B, C], and with
`select` of the next frontier [B, k], the slot tokens [B, T], hidden_in [B, T, H] and the ancestor
rows [B, T, T] (B, k from child_lp, C from cands.tokens, T from slots.tokens, H from hidden_in),
copying hidden_out [B, >= T, H] rows. A buffer with fewer rows, slots or columns, or of another
dtype, is a ValueError naming it (unchecked, a frontier of B - 1 rows, a hidden_in of T - 2 slots
or candidates of B - 1 rows were written past their ends). Negative controls: without `select`
the selection's buffers are neither checked nor written, and the right buffers give the
reference's outputs bit for bit."""

import math

import pytest
import torch

from samgpu.kernels.eagle_expand import eagle_expand_ref, eagle_expand_triton
from tests.kernels.test_eagle_expand import make_inputs, run_both, same_bits

IMPLS = [pytest.param(eagle_expand_triton, id="triton"), pytest.param(eagle_expand_ref, id="ref")]
NUM_REQS, TOPK, DEPTH_SLOT = 2, 2, 1  # T = 6 slots, the frontier at slots 2, 3
LO = DEPTH_SLOT * TOPK


def _inside(t: torch.Tensor, shape: tuple, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A contiguous `shape` buffer at the start of one as large as `t`, in `dtype` (t's by
    default): what an unchecked kernel wrote past its end stays inside memory the test owns."""
    base = torch.zeros(2 * t.numel(), dtype=torch.int64, device=t.device)  # room in any dtype
    return base.view(dtype or t.dtype)[: math.prod(shape)].view(shape)


# (what, field, change of the right buffer's shape, other dtype or None): each makes it wrong
CASES = {
    "scores_in-rows": ("front", "scores_in", (-1, 0), None),
    "cand_in-dtype": ("front", "cand_in", (0, 0), torch.int32),
    "scores_out-rows": ("front", "scores_out", (-1, 0), None),
    "cand_out-width": ("front", "cand_out", (0, -1), None),
    "cand_tokens-rows": ("cands", "tokens", (-1, 0), None),
    "cand_scores-rows": ("cands", "scores", (-1, 0), None),
    "cand_parents-dtype": ("cands", "parents", (0, 0), torch.int32),
    "slot_tokens-rows": ("slots", "tokens", (-1, 0), None),
    "slot_tokens-dtype": ("slots", "tokens", (0, 0), torch.int32),
    "hidden_in-slots": ("slots", "hidden_in", (0, -2, 0), None),
    "hidden_in-rows": ("slots", "hidden_in", (-1, 0, 0), None),
    "hidden_out-slots": ("slots", "hidden_out", (0, -2, 0), None),  # T + 1 -> T - 1 slots
    "hidden_out-width": ("slots", "hidden_out", (0, 0, -1), None),
    "hidden_out-dtype": ("slots", "hidden_out", (0, 0, 0), torch.float64),
    "ancestors-slots": ("slots", "ancestors", (0, -1, -1), None),
    "ancestors-dtype": ("slots", "ancestors", (0, 0, 0), torch.uint8),
}
PREFIX = {"front": "frontier ", "cands": "candidate ", "slots": ""}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("what, field, change, dtype", CASES.values(), ids=CASES.keys())
def test_wrong_buffer_is_refused(impl, what, field, change, dtype):
    lp, tok, front, cands, slots = make_inputs(NUM_REQS, TOPK, DEPTH_SLOT)
    bufs = {"front": front, "cands": cands, "slots": slots}
    right = getattr(bufs[what], field)
    shape = tuple(n + d for n, d in zip(right.shape, change, strict=True))
    setattr(bufs[what], field, _inside(right, shape, dtype))
    name = "slot tokens" if (what, field) == ("slots", "tokens") else PREFIX[what] + field
    with pytest.raises(ValueError, match=f"eagle_expand: {name} "):
        impl(lp, tok, front, cands, TOPK, slots, LO, True)


@pytest.mark.parametrize("impl", IMPLS)
def test_without_select_the_selection_buffers_are_not_touched(impl):
    """Negative control of the `select` gate: the last depth writes the candidates only, so the
    frontier's outputs and the slots may be anything (here one row short); they stay as given."""
    lp, tok, front, cands, slots = make_inputs(NUM_REQS, TOPK, DEPTH_SLOT)
    want = make_inputs(NUM_REQS, TOPK, DEPTH_SLOT)
    front.scores_out = _inside(front.scores_out, (NUM_REQS - 1, TOPK)).fill_(7.0)
    slots.hidden_in = _inside(slots.hidden_in, (NUM_REQS - 1, *slots.hidden_in.shape[1:]))
    impl(lp, tok, front, cands, TOPK, slots, LO, False)
    eagle_expand_ref(*want[:4], TOPK, want[4], LO, False)
    assert front.scores_out.eq(7.0).all() and slots.hidden_in.eq(0).all()
    for name in ("tokens", "scores", "parents"):
        assert same_bits(getattr(cands, name), getattr(want[3], name)), name


@pytest.mark.parametrize("select", [True, False])
def test_right_buffers_equal_the_reference(select):
    """Negative control: the right buffers pass, and the kernel's every output equals the
    reference's bit for bit."""
    lp, tok, front, cands, slots = make_inputs(NUM_REQS, TOPK, DEPTH_SLOT)
    got, want = run_both(lp, tok, front, cands, slots, TOPK, LO, select)
    for g, w in zip(got, want, strict=True):
        assert same_bits(g, w)
