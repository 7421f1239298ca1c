"""PLD kernel vs reference: longest suffix n-gram (3..1), the latest occurrence with a whole draft
after it (else the earliest), chain tree."""

import pytest
import torch

from samgpu.kernels.pld import FILL_TOKEN, NO_PARENT, pld_draft_ref, pld_draft_triton

BACKENDS = [pytest.param(pld_draft_triton, id="triton"), pytest.param(pld_draft_ref, id="ref")]


def _text(rows, width=None):
    width = width or max(len(r) for r in rows) + 3
    text = torch.full((len(rows), width), -1, dtype=torch.int32)
    for b, r in enumerate(rows):
        text[b, : len(r)] = torch.tensor(r, dtype=torch.int32)
    return text, torch.tensor([len(r) for r in rows], dtype=torch.int32)


def _run(fn, rows, N=8, device="cpu", **kw):
    """Inputs and out buffers on `device`; the outputs come back on the CPU."""
    text, lens = (t.to(device) for t in _text(rows))
    B = len(rows)
    tok = torch.full((B, N), 99, dtype=torch.int32, device=device)
    par = torch.full((B, N), 99, dtype=torch.int32, device=device)
    num = torch.zeros(B, dtype=torch.int32, device=device)
    fn(text, lens, tok, par, num, **kw)
    return tok.cpu(), par.cpu(), num.cpu()


@pytest.mark.parametrize("fn", BACKENDS)
def test_golden_cases(fn, device):
    """Row 0: the 3-gram [5 7 9] occurs at 0 and 4, both followed by 4 tokens -> draft [4 5 7 9]
    (the latest, not [2 5 7 9]).
    Row 1: no 3- or 2-gram repeats, the 1-gram [3] occurs at 1 -> draft [8 3] (cut by the text end).
    Row 2: the last token never occurred before -> root only.
    Row 3: a single-token text -> root only."""
    rows = [[5, 7, 9, 2, 5, 7, 9, 4, 5, 7, 9], [1, 3, 8, 3], [1, 2, 3, 4], [6]]
    tok, par, num = _run(fn, rows, device=device, num_draft=4)
    F, P = FILL_TOKEN, NO_PARENT
    assert torch.equal(num, torch.tensor([5, 3, 1, 1], dtype=torch.int32))
    assert tok.tolist() == [
        [9, 4, 5, 7, 9, F, F, F],
        [3, 8, 3, F, F, F, F, F],
        [4, F, F, F, F, F, F, F],
        [6, F, F, F, F, F, F, F],
    ]
    assert par.tolist() == [
        [P, 0, 1, 2, 3, P, P, P],
        [P, 0, 1, P, P, P, P, P],
        [P] * 8,
        [P] * 8,
    ]


@pytest.mark.parametrize("fn", BACKENDS)
def test_latest_occurrence_with_a_whole_draft(fn, device):
    """[1 2] occurs at 0 (then 7 7 7 7), 6 (then 8 8 8 8) and 13 (then 6 1 2: 3 tokens): with 4
    drafts the latest followed by 4 tokens wins (not the earliest [7 ...], not the short [6 1 2]);
    with 3 drafts the one at 13 has them; with 17 none has: the earliest, cut by the text."""
    row = [1, 2, 7, 7, 7, 7, 1, 2, 8, 8, 8, 8, 5, 1, 2, 6, 1, 2]
    tok, _, num = _run(fn, [row], N=11, device=device, num_draft=4)
    assert tok[0, : num.item()].tolist() == [2, 8, 8, 8, 8]
    tok, _, num = _run(fn, [row], N=11, device=device, num_draft=3)
    assert tok[0, : num.item()].tolist() == [2, 6, 1, 2]
    tok, _, num = _run(fn, [row], N=32, device=device, num_draft=17)
    assert tok[0, : num.item()].tolist() == [2] + row[2:]
    # 606 tokens, [1 2] at 0, 102 and the end: the right-to-left scan crosses a 256-token block
    long = [1, 2, *range(10, 110), 1, 2, *range(200, 700), 1, 2]
    tok, _, num = _run(fn, [long], N=8, device=device, num_draft=4)
    assert tok[0, : num.item()].tolist() == [2, 200, 201, 202, 203]


@pytest.mark.parametrize("fn", BACKENDS)
def test_longer_ngram_beats_earlier_shorter(fn, device):
    """[1 2] at 0 and [0 1 2] at 4: the 3-gram suffix [0 1 2] wins although [1 2] occurs earlier;
    min_ngram=3 drops a text whose only repeat is a 2-gram."""
    tok, _, num = _run(fn, [[1, 2, 6, 6, 0, 1, 2, 7, 7, 0, 1, 2]], device=device, num_draft=3)
    assert tok[0, :4].tolist() == [2, 7, 7, 0] and num.item() == 4
    _, _, num = _run(fn, [[1, 2, 6, 3, 1, 2]], device=device, num_draft=3, min_ngram=3)
    assert num.item() == 1


@pytest.mark.parametrize("num_reqs", [1, 3])
@pytest.mark.parametrize("seq_len", [2, 300])
def test_random_sweep_matches_reference(num_reqs, seq_len, device):
    """Small alphabets force repeats; lengths vary per row; text longer than one scan block."""
    g = torch.Generator().manual_seed(seq_len + num_reqs)
    rows = []
    for b in range(num_reqs):
        L = int(torch.randint(1, seq_len + 1, (1,), generator=g))
        rows.append(torch.randint(0, 3 + b, (L,), generator=g).tolist())
    for N, num_draft in ((11, 10), (4, 3)):
        got = _run(pld_draft_triton, rows, N=N, device=device, num_draft=num_draft)
        want = _run(pld_draft_ref, rows, N=N, device=device, num_draft=num_draft)
        for g_, w_ in zip(got, want, strict=True):
            assert torch.equal(g_, w_)


def test_bad_num_draft_is_a_value_error():
    with pytest.raises(ValueError, match="num_draft"):
        _run(pld_draft_ref, [[1, 2]], N=4, num_draft=4)
