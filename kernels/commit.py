"""Commit: append the tokens a step emits to each sequence's text and advance its lengths.

A step emits, per sequence, the accepted draft tokens in path order, then the bonus:
emitted[t] = tokens[b, accepted_nodes[b, t + 1]] for t < num_accepted[b], emitted[num_accepted] =
bonus[b]. Commit keeps the first `num_new` of them:
  num_new = min(num_accepted + 1, (index of the first EOS) + 1, max_new_tokens - num_generated),
and 0 for a sequence already finished before this step (finished sequences are masked, not removed).
The kept tokens are written to text[b, text_len:text_len + num_new] and to new_tokens[b, :num_new]
(PAD_TOKEN beyond); text_len, cache_len and num_generated advance by num_new; root becomes the last
kept token (the bonus unless cut); finished is set when an EOS was kept or num_generated reached
max_new_tokens. EOS ids come as a small int32 vector (PAD_TOKEN entries never match).

Inputs: `step` (StepOutput: tree tokens, verify's accepted path and bonus) and `state` (DecodeState:
text [B, max_len] int32, text_len, cache_len, num_generated, max_new_tokens, finished [B] bool,
root; all [B] int32 unless said), updated in place. Outputs: step.new_tokens [B, K] int32,
step.num_new [B].
One program per sequence; a [K] vector of emitted tokens in registers.

Example: accepted_nodes [0, 2, 3], num_accepted 2, tokens [C, X, D, E], bonus F, eos {E}:
emitted D E F -> kept D E (EOS kept), num_new 2, finished, root E.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels.types import PAD_TOKEN, DecodeState, StepOutput


@triton.jit
def _commit_append_kernel(
    tokens_ptr,  # [B, N] int32; draft tokens
    accepted_ptr,  # [B, K] int32; root + accepted path
    num_accepted_ptr,  # [B] int32
    bonus_ptr,  # [B] int32
    eos_ptr,  # [E] int32; EOS ids
    text_ptr,  # [B, max_len] int32 (in/out)
    text_len_ptr,  # [B] int32 (in/out)
    cache_len_ptr,  # [B] int32 (in/out)
    num_generated_ptr,  # [B] int32 (in/out)
    max_new_tokens_ptr,  # [B] int32
    finished_ptr,  # [B] uint8 view of bool (in/out)
    root_ptr,  # [B] int32 (out)
    new_tokens_ptr,  # [B, K] int32 (out)
    num_new_ptr,  # [B] int32 (out)
    num_eos,  # E
    max_len,  # text capacity
    MAX_NODES: tl.constexpr,  # N
    K: tl.constexpr,  # max_depth + 1
    BLOCK_K: tl.constexpr,  # next power of two >= K
    BLOCK_E: tl.constexpr,  # next power of two >= max(E, 1)
):
    """One program per sequence."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.arange(0, BLOCK_K)
    num_acc = tl.load(num_accepted_ptr + b)
    is_draft = t < num_acc
    node = tl.load(accepted_ptr + b * K + t + 1, mask=is_draft, other=0)
    emitted = tl.load(tokens_ptr + b * MAX_NODES + node, mask=is_draft, other=0)
    emitted = tl.where(t == num_acc, tl.load(bonus_ptr + b), emitted)
    e = tl.arange(0, BLOCK_E)
    eos = tl.load(eos_ptr + e, mask=e < num_eos, other=-1)
    is_eos = tl.max((emitted[:, None] == eos[None, :]).to(tl.int32), axis=1) > 0
    first_eos = tl.min(tl.where(is_eos & (t <= num_acc), t, BLOCK_K), axis=0)
    num_gen = tl.load(num_generated_ptr + b)
    budget = tl.load(max_new_tokens_ptr + b) - num_gen
    was_finished = tl.load(finished_ptr + b) != 0
    keep = tl.minimum(tl.minimum(num_acc + 1, first_eos + 1), budget)
    keep = tl.where(was_finished, 0, tl.maximum(keep, 0))
    text_len = tl.load(text_len_ptr + b)
    is_kept = t < keep
    tl.store(
        text_ptr + b * max_len + text_len + t, emitted, mask=is_kept & (text_len + t < max_len)
    )
    tl.store(new_tokens_ptr + b * K + t, tl.where(is_kept, emitted, -1), mask=t < K)
    tl.store(num_new_ptr + b, keep)
    tl.store(text_len_ptr + b, text_len + keep)
    tl.store(cache_len_ptr + b, tl.load(cache_len_ptr + b) + keep)
    tl.store(num_generated_ptr + b, num_gen + keep)
    last = tl.sum(tl.where(t == keep - 1, emitted, 0), axis=0)
    old_root = tl.load(root_ptr + b)
    tl.store(root_ptr + b, tl.where(keep > 0, last, old_root))
    is_done = was_finished | (first_eos < keep) | (keep >= budget)
    tl.store(finished_ptr + b, is_done.to(tl.uint8))


def _unpack(state: DecodeState, step: StepOutput) -> tuple[torch.Tensor, ...]:
    """The step's verification and the state fields commit reads and writes, checked."""
    tokens, ver = step.tree.tokens, step.verify
    if tokens.ndim != 2 or tokens.dtype != torch.int32:
        raise ValueError(f"tokens must be [B, N] int32, got {tuple(tokens.shape)} {tokens.dtype}")
    num_reqs = tokens.shape[0]
    if ver.accepted_nodes.ndim != 2 or ver.accepted_nodes.shape[0] != num_reqs:
        raise ValueError(
            f"accepted_nodes {tuple(ver.accepted_nodes.shape)} must be [{num_reqs}, K] "
            f"with tokens {tuple(tokens.shape)}"
        )
    vectors = {
        "num_accepted": ver.num_accepted,
        "bonus": ver.bonus,
        "text": state.text,
        "text_len": state.text_len,
        "cache_len": state.cache_len,
        "num_generated": state.num_generated,
        "max_new_tokens": state.max_new_tokens,
        "finished": state.finished,
        "root": state.root,
        "new_tokens": step.new_tokens,
        "num_new": step.num_new,
    }
    for name, t in (("tokens", tokens), ("accepted_nodes", ver.accepted_nodes)):
        if not t.is_contiguous():  # (the kernel strides rows by their width)
            raise ValueError(f"{name} {tuple(t.shape)} must be contiguous")
    for name, t in vectors.items():
        if name == "text":
            ok = t.ndim == 2 and t.shape[0] == num_reqs and t.dtype == torch.int32
            ok = ok and t.is_contiguous()
        elif name == "new_tokens":
            ok = t.shape == ver.accepted_nodes.shape and t.dtype == torch.int32
            ok = ok and t.is_contiguous()
        elif name == "finished":
            ok = t.shape == (num_reqs,) and t.dtype == torch.bool
        else:
            ok = t.shape == (num_reqs,) and t.dtype == torch.int32
        if not ok:
            raise ValueError(
                f"{name} {tuple(t.shape)} {t.dtype} does not fit tokens {tuple(tokens.shape)} "
                f"and accepted_nodes {tuple(ver.accepted_nodes.shape)}"
            )
    return tuple(vectors.values())


def _check_eos(eos_ids: torch.Tensor) -> None:
    if eos_ids.ndim != 1 or eos_ids.dtype != torch.int32:
        raise ValueError(f"eos_ids must be [E] int32, got {tuple(eos_ids.shape)} {eos_ids.dtype}")


def commit_triton(state: DecodeState, step: StepOutput, eos_ids: torch.Tensor) -> None:
    """Append the emitted tokens of `step` to `state` (module docstring); eos_ids [E] int32."""
    fields = _unpack(state, step)
    _check_eos(eos_ids)
    (num_accepted, bonus, text, text_len, cache_len, num_generated, max_new_tokens, finished,
     root, new_tokens, num_new) = fields  # fmt: skip
    tokens, accepted_nodes = step.tree.tokens, step.verify.accepted_nodes
    num_reqs, max_nodes = tokens.shape
    k_slots = accepted_nodes.shape[1]
    _commit_append_kernel[(num_reqs,)](
        tokens,
        accepted_nodes,
        num_accepted,
        bonus,
        eos_ids,
        text,
        text_len,
        cache_len,
        num_generated,
        max_new_tokens,
        finished.view(torch.uint8),
        root,
        new_tokens,
        num_new,
        eos_ids.shape[0],
        text.shape[1],
        MAX_NODES=max_nodes,
        K=k_slots,
        BLOCK_K=triton.next_power_of_2(k_slots),
        BLOCK_E=triton.next_power_of_2(max(eos_ids.shape[0], 1)),
    )


def commit_ref(state: DecodeState, step: StepOutput, eos_ids: torch.Tensor) -> None:
    """Reference: one sequence at a time, on python lists."""
    _unpack(state, step)
    _check_eos(eos_ids)
    eos = set(eos_ids.tolist())
    tokens, ver = step.tree.tokens, step.verify
    toks, acc = tokens.tolist(), ver.accepted_nodes.tolist()
    text, new_tokens = state.text, step.new_tokens
    new_tokens.fill_(PAD_TOKEN)
    for b in range(tokens.shape[0]):
        n = int(ver.num_accepted[b])
        emitted = [toks[b][acc[b][t + 1]] for t in range(n)] + [int(ver.bonus[b])]
        budget = int(state.max_new_tokens[b]) - int(state.num_generated[b])
        kept = []
        if not bool(state.finished[b]):
            for tok in emitted[: max(budget, 0)]:
                kept.append(tok)
                if tok in eos:
                    break
        keep = len(kept)
        start = int(state.text_len[b])
        room = max(0, min(keep, text.shape[1] - start))
        text[b, start : start + room] = torch.tensor(kept[:room], dtype=torch.int32)
        new_tokens[b, :keep] = torch.tensor(kept, dtype=torch.int32)
        step.num_new[b] = keep
        state.text_len[b] += keep
        state.cache_len[b] += keep
        state.num_generated[b] += keep
        if keep:
            state.root[b] = kept[-1]
        hit_eos = keep > 0 and kept[-1] in eos
        state.finished[b] = bool(state.finished[b]) or hit_eos or keep >= budget


def commit(state: DecodeState, step: StepOutput, eos_ids: torch.Tensor) -> None:
    impl = commit_triton if use_triton(step.tree.tokens) else commit_ref
    impl(state, step, eos_ids)


_SIG = {
    "tokens_ptr": "*i32",
    "accepted_ptr": "*i32",
    "num_accepted_ptr": "*i32",
    "bonus_ptr": "*i32",
    "eos_ptr": "*i32",
    "text_ptr": "*i32",
    "text_len_ptr": "*i32",
    "cache_len_ptr": "*i32",
    "num_generated_ptr": "*i32",
    "max_new_tokens_ptr": "*i32",
    "finished_ptr": "*u8",
    "root_ptr": "*i32",
    "new_tokens_ptr": "*i32",
    "num_new_ptr": "*i32",
    "num_eos": "i32",
    "max_len": "i32",
    "MAX_NODES": "constexpr",
    "K": "constexpr",
    "BLOCK_K": "constexpr",
    "BLOCK_E": "constexpr",
}
AOT_SPECS = [
    AotSpec(
        _commit_append_kernel,
        _SIG,
        {"MAX_NODES": n, "K": k, "BLOCK_K": triton.next_power_of_2(k), "BLOCK_E": e},
    )
    for n, k, e in [(1, 1, 16), (7, 4, 2), (64, 17, 16), (81, 9, 16), (128, 65, 8)]
]
