"""vocab_topk (two launches) equals log_softmax + topk: ids exactly, log-probs to rounding."""

import math

import pytest
import torch

from samgpu.kernels.vocab_topk import (
    vocab_top_ids,
    vocab_topk,
    vocab_topk_ref,
    vocab_topk_triton,
)


def test_worked_example(device):
    """logits [0, ln 3], k = 1 -> log(0.75) at id 1."""
    x = torch.tensor([[0.0, math.log(3.0)]], device=device)
    for impl in (vocab_topk_triton, vocab_topk_ref):
        val, idx = impl(x, 1)
        assert idx.tolist() == [[1]]
        torch.testing.assert_close(val, torch.tensor([[math.log(0.75)]], device=device))


@pytest.mark.parametrize(
    "rows, vocab, k, dtype",
    [(3, 5000, 8, torch.float32), (2, 4096, 4, torch.bfloat16), (1, 300, 10, torch.float32)],
)
def test_matches_log_softmax_topk(rows, vocab, k, dtype, device):
    """A unique top k (k + 4 planted values 0, 0.5, 1, ... over noise in [-8, -4], exact in
    bf16): ids equal exactly; 5000 columns span three blocks of 2048, the last partial; 300
    columns: one block smaller than BLOCK."""
    g = torch.Generator().manual_seed(vocab + k)
    x = torch.rand(rows, vocab, generator=g) * 4 - 8
    for r in range(rows):
        at = torch.randperm(vocab, generator=g)[: k + 4]
        x[r, at] = torch.arange(k + 4, dtype=torch.float32) * 0.5
    x = x.to(device, dtype)
    got_val, got_idx = vocab_topk_triton(x, k)
    want_val, want_idx = vocab_topk_ref(x, k)
    assert torch.equal(got_idx.cpu(), want_idx.cpu())
    torch.testing.assert_close(got_val, want_val, rtol=1e-5, atol=1e-5)
    # negative control: the block-local ids alone (no block offset) are not the answer
    if vocab > 2048:
        assert not torch.equal((got_idx % 2048).cpu(), want_idx.cpu())


def test_dispatch_and_bad_arguments(device):
    x = torch.randn(2, 64, device=device)
    val, idx = vocab_topk(x, 3)
    assert torch.equal(idx.cpu(), x.float().log_softmax(-1).topk(3).indices.cpu())
    with pytest.raises(ValueError, match="k=0"):
        vocab_topk_triton(x, 0)
    with pytest.raises(ValueError, match=r"\[R, V\]"):
        vocab_topk_triton(x[0], 2)


def test_top_ids_equal_torch_topk(device):
    """vocab_top_ids (Token Recycling's update): the Triton path's ids equal torch.topk's on a
    unique top k over three blocks; the dispatch's torch path is torch.topk itself."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 5000, generator=g) * 4 - 8
    for r in range(4):
        x[r, torch.randperm(5000, generator=g)[:12]] = torch.arange(12.0) * 0.5
    x = x.to(device)
    want = x.topk(8, dim=-1).indices
    assert torch.equal(vocab_topk_triton(x, 8)[1].cpu(), want.cpu())
    assert torch.equal(vocab_top_ids(x, 8).cpu(), want.cpu())
    # negative control: the k best in ascending order are not the answer
    assert not torch.equal(vocab_top_ids(x, 8).flip(-1).cpu(), want.cpu())
