"""race_tokens_triton / race_tokens_ref: each node's token drawn by an exponential race on noise
keyed by (seed, request key, position). Kernel (interpreter on CPU) and reference hash the same
integers: their winners are compared exactly. The race is checked to sample its distribution
(chi-square, with a negative control) and to be a function of (seed, key, position) alone."""

import pytest
import torch

from samgpu.kernels.randoms import node_uniforms, race_tokens_ref, race_tokens_triton
from tests.decoding.test_sampling import chi_square_pvalue

IMPLS = [pytest.param(race_tokens_triton, id="triton"), pytest.param(race_tokens_ref, id="ref")]


def _race(impl, probs, seed, keys, positions, device):
    out = torch.zeros(probs.shape[:2], dtype=torch.int64, device=device)
    impl(
        probs.to(device),
        torch.tensor([seed], dtype=torch.int64, device=device),
        torch.tensor(keys, dtype=torch.int64, device=device),
        torch.tensor(positions, dtype=torch.int32, device=device),
        out,
    )
    return out.cpu()


def test_triton_equals_ref_exactly(device):
    """Random distributions over 1,500 tokens (two BLOCK_V blocks), keys and seeds of both signs
    and over 32 bits: the same winners."""
    gen = torch.Generator().manual_seed(3)
    probs = torch.softmax(2.0 * torch.randn(4, 6, 1500, generator=gen), dim=-1)
    probs[1, 2] = 0.0
    probs[1, 2, 77] = 1.0  # a certain token
    positions = torch.randint(0, 10_000, (4, 6), generator=gen).tolist()
    for seed, keys in [(0, [0, 1, 2, 3]), (-(2**62) - 5, [2**40, -7, 2**33 + 1, 5])]:
        a = _race(race_tokens_triton, probs, seed, keys, positions, device)
        b = _race(race_tokens_ref, probs, seed, keys, positions, "cpu")
        assert torch.equal(a, b)
        assert int(a[1, 2]) == 77


@pytest.mark.parametrize("impl", IMPLS)
def test_winners_are_distributed_as_probs(impl, device):
    """2,000 positions of one request racing p over 6 tokens (one of probability 0): the counts fit
    p; the same counts are rejected against a slightly other distribution (negative control)."""
    p = torch.tensor([0.05, 0.3, 0.0, 0.15, 0.4, 0.1])
    n = 2000
    winners = _race(impl, p.expand(1, n, 6).contiguous(), 11, [3], [list(range(n))], device)
    counts = torch.bincount(winners.flatten(), minlength=6).double()
    assert counts[2] == 0
    assert chi_square_pvalue(counts, p.double()) > 1e-4
    other = torch.tensor([0.1, 0.3, 0.0, 0.15, 0.35, 0.1]).double()
    assert chi_square_pvalue(counts, other) < 1e-8


@pytest.mark.parametrize("impl", IMPLS)
def test_noise_keyed_by_seed_key_position_only(impl, device):
    """A node's winner does not depend on its row or column in the batch, only on (seed, key,
    position); changing any one of them changes the draws (flat p over 256 tokens, 8 nodes)."""
    probs = torch.full((2, 8, 256), 1 / 256)
    pos = [list(range(100, 108)), list(range(200, 208))]
    base = _race(impl, probs, 1, [5, 6], pos, device)
    swapped = _race(impl, probs, 1, [6, 5], pos[::-1], device)
    assert torch.equal(base, swapped.flip(0))
    reversed_cols = _race(impl, probs, 1, [5, 6], [r[::-1] for r in pos], device)
    assert torch.equal(base, reversed_cols.flip(1))
    for seed, keys, p in [(2, [5, 6], pos), (1, [7, 8], pos), (1, [5, 6], [pos[1], pos[0]])]:
        assert not torch.equal(_race(impl, probs, seed, keys, p, device), base)


def test_uniforms_in_open_interval_and_flat():
    u = node_uniforms(123, -4, 77, 200_000)
    assert 0.0 < float(u.min()) and float(u.max()) < 1.0
    counts = torch.histc(u, bins=20, min=0.0, max=1.0).double()
    assert chi_square_pvalue(counts, torch.full((20,), 0.05, dtype=torch.float64)) > 1e-4


def test_bad_buffers_are_value_errors():
    probs = torch.full((2, 3, 4), 0.25)
    seed, keys = torch.zeros(1, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    pos, out = torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="seed"):
        race_tokens_ref(probs, seed.int(), keys, pos, out)
    with pytest.raises(ValueError, match="keys"):
        race_tokens_ref(probs, seed, keys[:1], pos, out)
    with pytest.raises(ValueError, match="probs"):
        race_tokens_ref(probs.double(), seed, keys, pos, out)
