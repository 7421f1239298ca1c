"""The store launchers' array checks (sam_store_append, sam_store_match and the store part of
sam_update, through `_sam_store_jit.check_arrays`): the kernels find generation g's row of an
array at g * (its width), the widths taken from tokens [G, C] (2C states, 3C edges), the table
[G, hash_size(C)] and match_state [G, R], so an array of another shape, dtype or layout is a
ValueError naming it, before any launch (unchecked, e.g. a match_len of fewer match rows than
match_state had the matches of generation 1 written past its end). Negative control: the right
arrays run, and the kernels equal the references."""

import pytest
import torch

from samgpu.automata import StoreAutomaton
from samgpu.kernels._sam_store_jit import FIELDS_EDGE, FIELDS_GEN, FIELDS_STATE
from samgpu.kernels.sam_store import sam_store_append_ref, sam_store_append_triton
from samgpu.kernels.sam_store_match import sam_store_match_ref, sam_store_match_triton
from samgpu.kernels.sam_update import sam_update_ref, sam_update_triton
from tests.conftest import DEVICE
from tests.kernels._sam_common import i32
from tests.kernels._wrong_buffers import kinds_for, wrong

NUM_REQS, CAPACITY, VOCAB = 2, 8, 4
ALL_FIELDS = (*FIELDS_STATE, *FIELDS_EDGE, "hash", "tokens", *FIELDS_GEN, "active")
ALL_FIELDS += ("num_rotations", "match_state", "match_len")


def _store() -> StoreAutomaton:
    return StoreAutomaton(NUM_REQS, CAPACITY, VOCAB, DEVICE)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences "1 2" and "3": from the root, matches of lengths 2 and 1."""
    return i32([[1, 2], [3, -1]]).to(DEVICE), i32([2, 1]).to(DEVICE)


def _append(impl):
    """Documents "1 2 3" and "3 1", rows 0 and 1 of a [2, 3] text."""
    text, rows = i32([[1, 2, 3], [3, 1, 0]]).to(DEVICE), torch.arange(2, device=DEVICE)
    return lambda st: impl(st, text, rows, i32([0, 0]).to(DEVICE), i32([3, 2]).to(DEVICE))


def _match(impl):
    return lambda st: impl(st, *_batch())


def _update(st):
    sam_update_triton(None, None, None, *_batch(), store=st)


# the wrong arrays go to the kernels' launchers; the references and sam_update share the check
# (test_shapes_follow_tokens_and_match_state runs them all)
TRITON_OPS = [
    pytest.param(_append(sam_store_append_triton), id="append"),
    pytest.param(_match(sam_store_match_triton), id="match"),
]
OPS = TRITON_OPS + [
    pytest.param(_append(sam_store_append_ref), id="append-ref"),
    pytest.param(_match(sam_store_match_ref), id="match-ref"),
    pytest.param(_update, id="update"),
]


# every array but tokens and match_state, which define C and R (below). (Without the check a table
# one entry narrower hangs rather than fails: the probe's `& (H - 1)` no longer covers it.)
CASES = [
    (name, kind)
    for name in ALL_FIELDS
    if name not in ("tokens", "match_state")
    for kind in kinds_for(getattr(_store(), name))
]


@pytest.mark.parametrize("op", TRITON_OPS)
@pytest.mark.parametrize("name, kind", CASES)
def test_wrong_store_array_is_refused(op, name, kind):
    st = _store()
    setattr(st, name, wrong(getattr(st, name), kind))
    with pytest.raises(ValueError, match=rf"store\.{name} "):
        op(st)


@pytest.mark.parametrize("op", OPS)
def test_shapes_follow_tokens_and_match_state(op):
    """tokens [G, C] gives the generations (exactly 2) and C, match_state [G, R] the match rows:
    one column fewer in tokens makes the states [2, 14] expected, one fewer match row makes
    match_len [2, 1] expected."""
    st = _store()
    st.tokens = torch.zeros(3, CAPACITY, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"store\.tokens must be \[G=2, C >= 2\]"):
        op(st)
    st = _store()
    st.tokens = st.tokens[:, :-1].contiguous()
    with pytest.raises(ValueError, match=r"store\.length \(2, 16\) .* must be \(2, 14\)"):
        op(st)
    st = _store()
    st.match_state = st.match_state[:1]
    with pytest.raises(ValueError, match=r"store\.match_state must be \[G=2, R\]"):
        op(st)
    st = _store()
    st.match_state = st.match_state[:, :1].contiguous()
    with pytest.raises(ValueError, match=r"store\.match_len \(2, 2\) .* must be \(2, 1\)"):
        op(st)


def test_array_on_another_device_is_refused():
    st = _store()
    st.hash = torch.empty_like(st.hash, device="meta")
    with pytest.raises(ValueError, match=rf"store\.hash .* on meta must be .* on {DEVICE}"):
        _match(sam_store_match_triton)(st)


def test_right_arrays_run_and_equal_the_reference():
    """Negative control: the holder's own arrays pass every launcher; append then match, and
    the fused update, leave every array equal to the references'."""
    got, want = _store(), _store()
    for st, append, match in (
        (got, sam_store_append_triton, sam_store_match_triton),
        (want, sam_store_append_ref, sam_store_match_ref),
    ):
        _append(append)(st)
        _match(match)(st)
    for f in ALL_FIELDS:
        assert torch.equal(getattr(got, f), getattr(want, f)), f
    assert got.match_len[0].tolist() == [2, 1] and got.text_len.tolist() == [7, 0]
    sam_update_triton(None, None, None, *_batch(), store=got)
    sam_update_ref(None, None, None, *_batch(), store=want)
    for f in ALL_FIELDS:
        assert torch.equal(getattr(got, f), getattr(want, f)), f


def test_debug_checks_catch_documents_outside_the_text(monkeypatch):
    """Under SAMGPU_DEBUG=1 (and only then: it syncs) a document whose row or span lies outside
    the text is an error; the right documents and an empty one anywhere (never read) pass."""
    monkeypatch.setenv("SAMGPU_DEBUG", "1")
    text = i32([[1, 2, 3], [3, 1, 0]]).to(DEVICE)
    for rows, starts, ends in (
        ([0, 2], [0, 0], [3, 2]),
        ([0, 1], [-1, 0], [3, 2]),
        ([0, 1], [0, 0], [4, 2]),
    ):
        with pytest.raises(ValueError, match=r"documents outside text \(2, 3\)"):
            sam_store_append_ref(
                _store(),
                text,
                torch.tensor(rows, device=DEVICE),
                *(i32(x).to(DEVICE) for x in (starts, ends)),
            )
    st = _store()
    _append(sam_store_append_triton)(st)
    sam_store_append_ref(
        st, text, torch.tensor([5], device=DEVICE), i32([9]).to(DEVICE), i32([9]).to(DEVICE)
    )
    assert st.num_docs.tolist() == [2, 0]
