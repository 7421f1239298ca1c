"""sam_dynamic_extend's slot checks: the kernel finds row b of every slot array at b * (its width),
the widths taken from tokens [R, C] (2C states, 3C edges) and the table [R, hash_size(C)], so an
array of another shape, dtype or layout is a ValueError naming it, before any launch (unchecked,
e.g. a tokens array of R - 1 rows had slot R - 1's text written past its end). The fused
sam_update goes through the same check. Negative control: the right arrays run, and the kernel
equals the reference."""

import pytest
import torch

from samgpu.automata import DynamicAutomata
from samgpu.kernels.sam_dynamic import (
    FIELDS_EDGE,
    FIELDS_SLOT,
    FIELDS_STATE,
    MAX_CAPACITY,
    sam_dynamic_extend_ref,
    sam_dynamic_extend_triton,
)
from samgpu.kernels.sam_update import sam_update_ref, sam_update_triton
from tests.conftest import DEVICE
from tests.kernels._sam_common import i32
from tests.kernels._wrong_buffers import kinds_for, wrong

IMPLS = [
    pytest.param(sam_dynamic_extend_triton, id="triton"),
    pytest.param(sam_dynamic_extend_ref, id="ref"),
]
NUM_REQS, CAPACITY, VOCAB = 2, 8, 4
ALL_FIELDS = FIELDS_STATE + FIELDS_EDGE + FIELDS_SLOT + ("hash", "tokens")


def _slots() -> DynamicAutomata:
    auto = DynamicAutomata(NUM_REQS, CAPACITY, VOCAB, DEVICE)
    auto.reset()
    return auto


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Texts "1 2 3 1" and "2 2 2": matches "1" (endpos 0) and "2 2" (endpos 1)."""
    return i32([[1, 2, 3, 1], [2, 2, 2, -1]]).to(DEVICE), i32([4, 3]).to(DEVICE)


# every array but tokens, which defines R and C (below); each with every kind that makes it wrong.
# (Without the check a table one entry narrower hangs rather than fails: 63 is no power of two, so
# the probe's `& (H - 1)` skips slots and can cycle without reaching a free one.)
CASES = [
    (name, kind)
    for name in FIELDS_STATE + FIELDS_EDGE + ("hash",) + FIELDS_SLOT
    for kind in kinds_for(getattr(_slots(), name))
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name, kind", CASES)
def test_wrong_slot_array_is_refused(impl, name, kind):
    auto = _slots()
    setattr(auto, name, wrong(getattr(auto, name), kind))
    with pytest.raises(ValueError, match=rf"slots\.{name} "):
        impl(auto, *_batch())


@pytest.mark.parametrize("impl", IMPLS)
def test_shapes_follow_tokens(impl):
    """tokens [R, C] defines the others' shapes: one row fewer makes the table [1, 64] expected,
    one column fewer the states [2, 14]; C past the 21-bit packing or a 1-D text is refused."""
    auto = _slots()
    auto.tokens = auto.tokens[:1]
    with pytest.raises(ValueError, match=r"slots\.hash \(2, 64\) .* must be \(1, 64\)"):
        impl(auto, *_batch())
    auto = _slots()
    auto.tokens = auto.tokens[:, :-1].contiguous()
    with pytest.raises(ValueError, match=r"slots\.length \(2, 16\) .* must be \(2, 14\)"):
        impl(auto, *_batch())
    auto.tokens = torch.zeros(1, MAX_CAPACITY + 1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"slots\.tokens must be \[R, C\] with 1 <= C"):
        impl(auto, *_batch())
    auto.tokens = torch.zeros(CAPACITY, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"slots\.tokens must be \[R, C\]"):
        impl(auto, *_batch())


def test_array_on_another_device_is_refused():
    auto = _slots()
    auto.link = torch.empty_like(auto.link, device="meta")
    with pytest.raises(ValueError, match=rf"slots\.link .* on meta must be .* on {DEVICE}"):
        sam_dynamic_extend_triton(auto, *_batch())


def test_fused_update_refuses_them_too():
    auto = _slots()
    auto.edge_slot = wrong(auto.edge_slot, "width")
    with pytest.raises(ValueError, match=r"slots\.edge_slot "):
        sam_update_triton(None, None, auto, *_batch())


def test_right_slots_run_and_equal_the_reference():
    """Negative control: the holder's own arrays pass, directly and through sam_update, and the
    kernel's arrays equal the reference's bit for bit."""
    pairs = [(_slots(), _slots()), (_slots(), _slots())]
    sam_dynamic_extend_triton(pairs[0][0], *_batch())
    sam_dynamic_extend_ref(pairs[0][1], *_batch())
    sam_update_triton(None, None, pairs[1][0], *_batch())
    sam_update_ref(None, None, pairs[1][1], *_batch())
    for got, want in pairs:
        for f in ALL_FIELDS:
            assert torch.equal(getattr(got, f), getattr(want, f)), f
        assert got.match_len.tolist() == [1, 2] and got.text_len.tolist() == [4, 3]
