"""eagle_expand's buffer checks: the kernel writes row b of the candidates [B, C], and with
`select` of the next frontier [B, k], the slot tokens [B, T], hidden_in [B, T, H] and the ancestor
rows [B, T, T] (B, k from child_lp, C from cands.tokens, T from slots.tokens, H from hidden_in),
copying hidden_out [B, >= T, H] rows. A buffer with fewer rows, slots or columns, or of another
dtype, is a ValueError naming it (unchecked, a frontier of B - 1 rows, a hidden_in of T - 2 slots
or candidates of B - 1 rows were written past their ends). Negative controls: without `select`
the selection's buffers are neither checked nor written, and the right buffers give the
reference's outputs bit for bit."""

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
    dtype = dtype or t.dtype
    base = torch.zeros(2 * t.numel() + 64, dtype=torch.int64)  # room in any dtype
    n = 1
    for s in shape:
        n *= s
    return base.view(dtype)[:n].view(shape)


# (what, field, shape of the wrong buffer from (B, k, C, T, H), its dtype or None, message)
CASES = [
    ("front", "scores_in", lambda B, k, C, T, H: (B - 1, k), None, "frontier scores_in"),
    ("front", "cand_in", lambda B, k, C, T, H: (B, k), torch.int32, "frontier cand_in"),
    ("front", "scores_out", lambda B, k, C, T, H: (B - 1, k), None, "frontier scores_out"),
    ("front", "cand_out", lambda B, k, C, T, H: (B, k - 1), None, "frontier cand_out"),
    ("cands", "tokens", lambda B, k, C, T, H: (B - 1, C), None, "candidate tokens"),
    ("cands", "scores", lambda B, k, C, T, H: (B - 1, C), None, "candidate scores"),
    ("cands", "parents", lambda B, k, C, T, H: (B, C), torch.int32, "candidate parents"),
    ("slots", "tokens", lambda B, k, C, T, H: (B - 1, T), None, "slot tokens"),
    ("slots", "tokens", lambda B, k, C, T, H: (B, T), torch.int32, "slot tokens"),
    ("slots", "hidden_in", lambda B, k, C, T, H: (B, T - 2, H), None, "hidden_in"),
    ("slots", "hidden_in", lambda B, k, C, T, H: (B - 1, T, H), None, "hidden_in"),
    ("slots", "hidden_out", lambda B, k, C, T, H: (B, T - 1, H), None, "hidden_out"),
    ("slots", "hidden_out", lambda B, k, C, T, H: (B, T, H - 1), None, "hidden_out"),
    ("slots", "hidden_out", lambda B, k, C, T, H: (B, T, H), torch.float64, "hidden_out"),
    ("slots", "ancestors", lambda B, k, C, T, H: (B, T - 1, T - 1), None, "ancestors"),
    ("slots", "ancestors", lambda B, k, C, T, H: (B, T, T), torch.uint8, "ancestors"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "what, field, shape, dtype, message",
    CASES,
    ids=[f"{c[0]}.{c[1]}-{i}" for i, c in enumerate(CASES)],
)
def test_wrong_buffer_is_refused(impl, what, field, shape, dtype, message):
    lp, tok, front, cands, slots = make_inputs(NUM_REQS, TOPK, DEPTH_SLOT)
    dims = (NUM_REQS, TOPK, cands.tokens.shape[1], slots.tokens.shape[1], slots.hidden_in.shape[2])
    bufs = {"front": front, "cands": cands, "slots": slots}
    right = getattr(bufs[what], field)
    setattr(bufs[what], field, _inside(right, shape(*dims), dtype))
    with pytest.raises(ValueError, match=f"eagle_expand: {message} "):
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
