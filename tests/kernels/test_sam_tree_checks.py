"""sam_tree's buffer checks: the kernel writes tokens/parents [B, N] int32 (N = tokens.shape[1]
nodes per row) and num_nodes [B], and reads state, match_len, root [B], each at element b with no
stride; so a parents buffer of another dtype, an empty row, or a strided [B] vector is a
ValueError naming it (unchecked, a num_nodes that is a column of a wider buffer had row 0's count
written into its neighbour column and row 1's never written). Negative control: the docstring's
example runs on the right buffers, in the kernel and in the reference."""

import pytest
import torch

from samgpu.automata import StaticAutomaton
from samgpu.kernels.sam_tree import NO_PARENT, sam_tree_ref, sam_tree_triton
from samgpu.sam import SamIndex
from tests.conftest import DEVICE
from tests.kernels._wrong_buffers import wrong

IMPLS = [pytest.param(sam_tree_triton, id="triton"), pytest.param(sam_tree_ref, id="ref")]
EOS = 0
TOK_A, TOK_B, TOK_C, TOK_D = 1, 2, 3, 4
NUM_NODES = 4


def _args():
    """Corpus "a b c" "a b d" "a b c", two sequences whose text ends in "a b", budget 4."""
    index = SamIndex.build(
        [[TOK_A, TOK_B, TOK_C], [TOK_A, TOK_B, TOK_D], [TOK_A, TOK_B, TOK_C]],
        vocab_size=5,
        eos_id=EOS,
    )
    s, length = index.match_state([TOK_A, TOK_B])
    return {
        "automaton": StaticAutomaton.from_index(index, DEVICE),
        "state": torch.tensor([s, s], dtype=torch.int32, device=DEVICE),
        "match_len": torch.tensor([length, length], dtype=torch.int32, device=DEVICE),
        "root": torch.tensor([TOK_B, TOK_B], dtype=torch.int32, device=DEVICE),
        "tokens": torch.full((2, NUM_NODES), 99, dtype=torch.int32, device=DEVICE),
        "parents": torch.full((2, NUM_NODES), 99, dtype=torch.int32, device=DEVICE),
        "num_nodes": torch.zeros(2, dtype=torch.int32, device=DEVICE),
    }


CASES = [
    ("parents", "dtype", r"tree parents \(2, 4\) torch.int64: expected int32"),
    ("tokens", "dtype", r"tree tokens \(2, 4\) torch.int64: expected int32"),
    ("num_nodes", "strided", r"num_nodes \(2,\) torch.int32: expected contiguous \(2,\)"),
    ("state", "strided", r"state \(2,\) torch.int32: expected contiguous"),
    ("match_len", "strided", r"match_len \(2,\) torch.int32: expected contiguous"),
    ("root", "strided", r"root \(2,\) torch.int32: expected contiguous"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name, kind, message", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_wrong_buffer_is_refused(impl, name, kind, message):
    args = _args()
    args[name] = wrong(args[name], kind)
    with pytest.raises(ValueError, match=message):
        impl(**args)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_rows_are_refused(impl):
    """N = 0: no room for the root (the tree has 1 <= num_nodes <= N)."""
    args = _args()
    args["tokens"] = args["parents"] = torch.zeros(2, 0, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"expected \[B, N >= 1\]"):
        impl(**args)


@pytest.mark.parametrize("impl", IMPLS)
def test_right_buffers_give_the_docstring_tree(impl):
    """Negative control: [b, c, EOS, d], parents [-1, 0, 1, 0] in both rows, 4 nodes each; and a
    tree budget that is a column slice of a wider buffer (rows strided, columns unit) is fine."""
    args = _args()
    impl(**args)
    assert args["tokens"].tolist() == [[TOK_B, TOK_C, EOS, TOK_D]] * 2
    assert args["parents"].tolist() == [[NO_PARENT, 0, 1, 0]] * 2
    assert args["num_nodes"].tolist() == [NUM_NODES] * 2
    wide = torch.full((2, 2, NUM_NODES + 2), 99, dtype=torch.int32, device=DEVICE)
    args["tokens"], args["parents"] = wide[0, :, :NUM_NODES], wide[1, :, :NUM_NODES]
    impl(**args)
    assert wide[0, :, :NUM_NODES].tolist() == [[TOK_B, TOK_C, EOS, TOK_D]] * 2
    assert wide[..., NUM_NODES:].eq(99).all()  # nothing past the slices
