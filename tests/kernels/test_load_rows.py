"""load_rows: new requests into slots of the decode state in one launch. Triton (interpreter on
CPU) against the torch reference on random state, exact equality of every buffer; the rows not
loaded keep their values, the loaded ones change (the comparison is not between two no-ops)."""

import pytest
import torch

from samgpu.kernels.load_rows import load_rows_ref, load_rows_triton
from samgpu.kernels.types import PAD_TOKEN, DecodeState

R, MAX_LEN, K, S = 6, 40, 5, 7


def _random_state(gen, device):
    def i32(*shape):
        return torch.randint(-3, 90, shape, generator=gen, dtype=torch.int32).to(device)

    state = DecodeState(
        root=i32(R),
        cache_len=i32(R),
        text=i32(R, MAX_LEN),
        text_len=i32(R),
        prompt_len=i32(R),
        num_generated=i32(R),
        max_new_tokens=i32(R),
        finished=(i32(R) > 40),
    )
    keys = torch.randint(-(2**62), 2**62, (R,), generator=gen).to(device)
    counters = (i32(R), i32(R, K), i32(R, S), i32(R), i32(R, K), keys)
    return state, counters


def _buffers(state, counters):
    fields = ("root", "text", "text_len", "prompt_len", "num_generated", "max_new_tokens")
    return (
        [getattr(state, f).cpu() for f in fields]
        + [state.finished.cpu()]
        + [c.cpu() for c in counters]
    )


@pytest.mark.parametrize("width", [7, MAX_LEN])
def test_triton_equals_ref(width, device):
    gen = torch.Generator().manual_seed(width)
    index = torch.tensor([4, 0, 2], dtype=torch.int64)
    lens = torch.tensor([width, 1, 3], dtype=torch.int32)
    text_in = torch.randint(0, 50, (3, width), generator=gen, dtype=torch.int32)
    text_in[1, 1:] = text_in[2, 3:] = PAD_TOKEN  # padded prompts
    keys = torch.tensor([2**40 + 3, -9, 0], dtype=torch.int64)
    args = (index, text_in, lens, keys, 77)
    s_ref, c_ref = _random_state(torch.Generator().manual_seed(1), "cpu")
    before = _buffers(s_ref, c_ref)
    load_rows_ref(s_ref, c_ref, *args)
    s_tri, c_tri = _random_state(torch.Generator().manual_seed(1), device)
    load_rows_triton(s_tri, c_tri, *(a.to(device) if torch.is_tensor(a) else a for a in args))
    after_ref, after_tri = _buffers(s_ref, c_ref), _buffers(s_tri, c_tri)
    for a, b in zip(after_tri, after_ref, strict=True):
        assert torch.equal(a, b)
    untouched = [1, 3, 5]
    for a, b in zip(after_ref, before, strict=True):
        assert torch.equal(a[untouched], b[untouched])
    assert s_ref.text[4, :width].tolist() == text_in[0].tolist()
    assert s_ref.text[0].tolist() == [int(text_in[1, 0])] + [PAD_TOKEN] * (MAX_LEN - 1)
    assert s_ref.root[[4, 0, 2]].tolist() == [text_in[0, width - 1], text_in[1, 0], text_in[2, 2]]
    assert c_ref[5][[4, 0, 2]].tolist() == keys.tolist()
    assert not s_ref.finished[[4, 0, 2]].any() and (s_ref.max_new_tokens[[4, 0, 2]] == 77).all()


def test_new_tokens_of_another_width_are_written_within_their_rows(device):
    """The plain steps' new_tokens are [R, 1] while accepted_hist is [R, K]: each is written at
    its own row length. Writing new_tokens at K per row ran past its end (H200, 2026-12-02: a
    landing during plain steps overwrote the next buffers, among them the EOS ids, and requests
    stopped ending at EOS). The buffer is a view at the head of a larger one: the rest must stay."""
    gen = torch.Generator().manual_seed(3)
    index = torch.tensor([5, 1], dtype=torch.int64)
    lens = torch.tensor([2, 3], dtype=torch.int32)
    text_in = torch.randint(0, 50, (2, 3), generator=gen, dtype=torch.int32)
    keys = torch.tensor([7, 8], dtype=torch.int64)
    results = []
    for impl, dev in ((load_rows_ref, "cpu"), (load_rows_triton, device)):
        state, counters = _random_state(torch.Generator().manual_seed(1), dev)
        backing = torch.full((R * K,), 1234, dtype=torch.int32, device=dev)
        new_tokens = backing[:R].view(R, 1)
        counters = (*counters[:4], new_tokens, counters[5])
        args = (index.to(dev), text_in.to(dev), lens.to(dev), keys.to(dev), 9)
        impl(state, counters, *args)
        results.append(backing.cpu())
    ref, tri = results
    assert ref[[5, 1]].tolist() == [PAD_TOKEN, PAD_TOKEN] and ref[[0, 2, 3, 4]].eq(1234).all()
    assert (ref[R:] == 1234).all()  # (the reference writes index rows only)
    assert torch.equal(tri, ref)


def test_bad_inputs_are_value_errors():
    state, counters = _random_state(torch.Generator().manual_seed(0), "cpu")
    index, lens = torch.tensor([1]), torch.tensor([2], dtype=torch.int32)
    text_in, keys = torch.zeros(1, 4, dtype=torch.int32), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="index"):
        load_rows_ref(state, counters, index.int(), text_in, lens, keys, 5)
    with pytest.raises(ValueError, match="new_tokens"):
        short = (*counters[:4], counters[4][:-1], counters[5])  # a row short
        load_rows_ref(state, short, index, text_in, lens, keys, 5)
    with pytest.raises(ValueError, match="state.text"):  # (rows strided by max_len)
        wide = torch.zeros(R, 2 * MAX_LEN, dtype=torch.int32)[:, ::2]
        load_rows_ref(
            DecodeState(**dict(vars(state), text=wide)), counters, index, text_in, lens, keys, 5
        )
    with pytest.raises(ValueError, match="text_in"):
        load_rows_ref(
            state, counters, index, torch.zeros(1, MAX_LEN + 1, dtype=torch.int32), lens, keys, 5
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiles happen on a GPU only")
def test_admission_widths_compile_once():
    """An admission's pad width changes with every admission; the kernel must not specialize on
    it (Triton's == 1 and % 16 cases), else a run compiles new variants mid-generation. After a
    first launch (width 7), widths 3, 16, 1, 33, 32 and budgets 16 and 1: no compile. Control: a
    kernel launched with a value it does specialize on (rms_norm at hidden 17 after 64) is seen
    compiling, so the hook would have seen load_rows'."""
    from profiling.common import TritonCompiles
    from samgpu.kernels.rms_norm import rms_norm

    def admit(width: int, budget: int = 77, plain: bool = False) -> None:
        gen = torch.Generator().manual_seed(width)
        text_in = torch.randint(0, 50, (2, width), generator=gen, dtype=torch.int32).cuda()
        lens = torch.tensor([width, 1], dtype=torch.int32).cuda()
        index = torch.tensor([4, 0]).cuda()
        keys = torch.tensor([5, 6]).cuda()
        state, counters = _random_state(torch.Generator().manual_seed(1), "cuda")
        if plain:  # a plain step's views: one new token per step (num_new_k == 1)
            counters = (*counters[:4], counters[4][:, :1].contiguous(), counters[5])
        load_rows_triton(state, counters, index, text_in, lens, keys, budget)

    admit(7)
    with TritonCompiles() as compiles:
        for width in (3, 16, 1, 33, 32):
            admit(width)
        admit(9, budget=16)
        admit(9, budget=1)
        admit(9, plain=True)
        torch.cuda.synchronize()
    assert compiles.since(float("-inf")) == []
    rms_norm(torch.randn(3, 64, device="cuda"), torch.ones(64, device="cuda"), 1e-6)
    with TritonCompiles() as control:
        rms_norm(torch.randn(3, 17, device="cuda"), torch.ones(17, device="cuda"), 1e-6)
        torch.cuda.synchronize()
    assert control.since(float("-inf")), "the hook saw no compile: the check above proves nothing"
