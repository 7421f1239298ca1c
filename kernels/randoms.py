"""Sampling by position-keyed noise: the token each tree node's distribution draws.

`race_tokens_triton(probs, seed, keys, positions, out)` (reference `race_tokens_ref`, node by
node; verify_sample_ref races only the nodes its walk visits, with `race_node_ref`): for every
node i of sequence b,
    out[b, i] = argmax_v probs[b, i, v] / E(seed, keys[b], positions[b, i], v)
(the exponential race: with E ~ Exp(1) i.i.d., the winner is distributed as probs[b, i]; first
maximum on ties, tokens of probability 0 never win). E = -log(u) with u in (0, 1) from a counter
hash of (seed, request key, position, token): no stored randoms, no generator state, and the same
number for the same (request, position, token) whatever the step, batch slot, tree shape or call.

Why keyed by position: a request's token at position p is then a function of its prefix and the
noise at p alone. Verification accepts a draft child iff its token is the node's race winner (the
greedy walk, with winners for argmaxes), so every method, batch size and batching mode emits the
tokens that `ar` samples with the same seed and keys (up to floating-point near-ties of the
logits, as greedy decoding), and a seed reproduces a call on any decoder. For deterministic drafts
the chance that a node's children hold the winner is the children's total probability, what
recursive rejection sampling accepts: no acceptance is lost.

The hash is murmur3's 32-bit finaliser chained over the fields, in uint32 arithmetic in the kernel
and in int64 masked to 32 bits in the reference: the same integers bit for bit, so kernel and
reference differ only where -log rounds apart at a near-tie of the race.
Example: probs [[[0, 1, 0]]] -> out [[1]] for any seed, key and position.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec

_BLOCK_V: int = 1024
_M1, _M2, _GOLDEN = 0x85EBCA6B, 0xC2B2AE35, 0x9E3779B9  # murmur3 fmix32; 2**32 / phi
_MASK = 0xFFFFFFFF


@triton.jit
def _fmix32(x):
    """murmur3's finaliser on uint32 (wrapping multiplies)."""
    x ^= x >> 16
    x *= 0x85EBCA6B
    x ^= x >> 13
    x *= 0xC2B2AE35
    x ^= x >> 16
    return x


@triton.jit
def _race_kernel(
    probs_ptr,  # [B, N, V] float32
    seed_ptr,  # [1] int64
    keys_ptr,  # [B] int64; a request's sampling key
    positions_ptr,  # [B, N] int32; the node's position in its sequence
    out_ptr,  # [B, N] int64 (out): the race winner
    vocab_size,
    MAX_NODES: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One program per node: its noise key, then one pass over the vocabulary."""
    node = tl.program_id(0).to(tl.int64)
    seed = tl.load(seed_ptr)
    key = tl.load(keys_ptr + node // MAX_NODES)
    pos = tl.load(positions_ptr + node)
    h = _fmix32((seed & 0xFFFFFFFF).to(tl.uint32) ^ 0x2545F491)
    h = _fmix32(h ^ ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32))
    h = _fmix32(h ^ (key & 0xFFFFFFFF).to(tl.uint32))
    h = _fmix32(h ^ ((key >> 32) & 0xFFFFFFFF).to(tl.uint32))
    h = _fmix32(h ^ pos.to(tl.uint32))
    offs_v = tl.arange(0, BLOCK_V)
    row = probs_ptr + node * vocab_size
    best_score = tl.full([], -2.0, dtype=tl.float32)
    best_token = tl.zeros([], dtype=tl.int64)
    for v0 in range(0, vocab_size, BLOCK_V):
        tok = v0 + offs_v
        in_vocab = tok < vocab_size
        p = tl.load(row + tok, mask=in_vocab, other=0.0)
        x = _fmix32(_fmix32(tok.to(tl.uint32) * 0x9E3779B9 ^ h) + h)
        u = ((x >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)  # 23 bits: exact, in (0, 1)
        score = tl.where(p > 0.0, p / -tl.log(u), -1.0)
        block_best = tl.max(score, axis=0)
        block_token = v0 + tl.argmax(score, axis=0).to(tl.int64)
        is_better = block_best > best_score  # strict: the first maximum wins, as torch.argmax
        best_token = tl.where(is_better, block_token, best_token)
        best_score = tl.where(is_better, block_best, best_score)
    tl.store(out_ptr + node, best_token)


def check_race(probs, seed, keys, positions, out):
    if probs.ndim != 3 or probs.dtype != torch.float32 or not probs.is_contiguous():
        raise ValueError(f"probs must be contiguous [B, N, V] float32, got {probs.dtype}")
    num_reqs, max_nodes, _ = probs.shape
    checks = (
        (seed, "seed", (1,), torch.int64),
        (keys, "keys", (num_reqs,), torch.int64),
        (positions, "positions", (num_reqs, max_nodes), torch.int32),
        (out, "out", (num_reqs, max_nodes), torch.int64),
    )
    for t, name, shape, dtype in checks:
        if t.shape != shape or t.dtype != dtype or not t.is_contiguous():
            raise ValueError(
                f"{name} {tuple(t.shape)} {t.dtype} must be contiguous {list(shape)} "
                f"{dtype} with probs {tuple(probs.shape)}"
            )


def race_tokens_triton(probs, seed, keys, positions, out):
    """out[b, i]: the token node (b, i) samples (module docstring); no host sync."""
    check_race(probs, seed, keys, positions, out)
    num_reqs, max_nodes, vocab_size = probs.shape
    _race_kernel[(num_reqs * max_nodes,)](
        probs, seed, keys, positions, out, vocab_size, MAX_NODES=max_nodes, BLOCK_V=_BLOCK_V
    )
    return out


def _fmix32_ref(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK  # int64 products wrap; their low 32 bits are uint32's
    x = x ^ (x >> 13)
    x = (x * _M2) & _MASK
    return x ^ (x >> 16)


def node_uniforms(seed: int, key: int, position: int, vocab_size: int) -> torch.Tensor:
    """u [V] in (0, 1) of one node: the kernel's numbers, bit for bit."""
    h = torch.tensor(seed, dtype=torch.int64)
    h = _fmix32_ref((h & _MASK) ^ 0x2545F491) ^ ((h >> 32) & _MASK)
    for field in (key & _MASK, (key >> 32) & _MASK, position & _MASK):
        h = _fmix32_ref(h) ^ field
    h = _fmix32_ref(h)
    tok = torch.arange(vocab_size, dtype=torch.int64)
    x = _fmix32_ref((_fmix32_ref(((tok * _GOLDEN) & _MASK) ^ h) + h) & _MASK)
    return ((x >> 9).float() + 0.5) * (1.0 / 8388608.0)


def race_node_ref(p: torch.Tensor, seed: int, key: int, position: int) -> int:
    """The token one node samples: argmax of p [V] / -log(u), first maximum, p = 0 never wins."""
    u = node_uniforms(seed, key, position, p.shape[-1])
    p = p.cpu()
    return int(torch.argmax(torch.where(p > 0.0, p / -torch.log(u), torch.full_like(p, -1.0))))


def race_tokens_ref(probs, seed, keys, positions, out):
    """Reference, node by node (reads seed, keys and positions on the host: CPU tensors only,
    where that is no device sync)."""
    check_race(probs, seed, keys, positions, out)
    s, ks, pos = int(seed[0]), keys.tolist(), positions.tolist()
    for b in range(probs.shape[0]):
        for i in range(probs.shape[1]):
            out[b, i] = race_node_ref(probs[b, i], s, ks[b], pos[b][i])
    return out


AOT_SPECS = [
    AotSpec(
        _race_kernel,
        {
            "probs_ptr": "*fp32",
            "seed_ptr": "*i64",
            "keys_ptr": "*i64",
            "positions_ptr": "*i32",
            "out_ptr": "*i64",
            "vocab_size": "i32",
            "MAX_NODES": "constexpr",
            "BLOCK_V": "constexpr",
        },
        {"MAX_NODES": n, "BLOCK_V": _BLOCK_V},
    )
    for n in (1, 17, 64)
]
