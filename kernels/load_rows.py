"""Load rows: new requests into slots of the decode state, one launch per admission.

For each new request i in slot b = index[i] (prompt text_in[i, :lens[i]], padded to W columns):
text[b] = its prompt then PAD_TOKEN; text_len[b] = prompt_len[b] = lens[i]; root[b] = the last
prompt token; max_new_tokens[b] = budget; sample_keys[b] = keys[i]; num_generated, num_steps,
accepted_hist, source_counts, num_new zeroed; new_tokens PAD_TOKEN; finished False. Other slots are
not touched.

Why a kernel: these were 16 torch calls of host time per admission, in front of every B=1 prefill
and of every landing between queued steps. H200, against the torch calls (2026-12-02): a B=1
admission's host time 0.63 vs 0.71 ms (profile_step; the host's noise is larger), `ar` through
bench_serve at B=64, runs interleaved, 33.5k / 34.6k vs 32.8k / 32.8k tok/s.
Grid (n, column blocks of the text row); the block-0 program of a row also writes its scalars.
Example: index [2], text_in [[5, 6, 7]], lens [3] -> text[2] = [5, 6, 7, PAD, ...], root[2] = 7.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._aot import AotSpec
from samgpu.kernels._dispatch import use_triton
from samgpu.kernels.types import PAD_TOKEN, DecodeState

_BLOCK: int = 1024


# The pad width changes with every admission, and a plain step's views have other widths than a
# drafting step's (num_new_k == 1): specialized (Triton's == 1 and % 16 cases), each compiled a
# new variant in the middle of runs (bench_serve's compiles_per_pass, 2026-12-02).
@triton.jit(do_not_specialize=["budget", "width", "num_k", "num_sources", "num_new_k"])
def _load_rows_kernel(
    text_in_ptr,  # [n, W] int32; prompts, padded
    lens_ptr,  # [n] int32
    index_ptr,  # [n] int64; their slots
    keys_ptr,  # [n] int64; their sampling keys
    text_ptr,  # [R, max_len] int32 (out, rows index)
    text_len_ptr,  # [R] int32 (out)
    prompt_len_ptr,  # [R] int32 (out)
    root_ptr,  # [R] int32 (out)
    max_new_ptr,  # [R] int32 (out)
    num_generated_ptr,  # [R] int32 (out)
    num_steps_ptr,  # [R] int32 (out)
    num_new_ptr,  # [R] int32 (out)
    finished_ptr,  # [R] uint8 view of bool (out)
    sample_keys_ptr,  # [R] int64 (out)
    hist_ptr,  # [R, K] int32 (out)
    sources_ptr,  # [R, S] int32 (out)
    new_tokens_ptr,  # [R, KN] int32 (out)
    budget,  # max_new_tokens
    width,  # W
    max_len,
    num_k,  # K
    num_sources,  # S
    num_new_k,  # KN: new_tokens' row length (the step buffers of the mode: 1 for plain steps)
    PAD: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,  # next power of two >= max(K, S, KN)
):
    i = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    b = tl.load(index_ptr + i)
    n_tok = tl.load(lens_ptr + i)
    cols = j * BLOCK + tl.arange(0, BLOCK)
    prompt = tl.load(text_in_ptr + i * width + cols, mask=cols < width, other=PAD)
    tl.store(text_ptr + b * max_len + cols, prompt, mask=cols < max_len)
    if j == 0:
        tl.store(text_len_ptr + b, n_tok)
        tl.store(prompt_len_ptr + b, n_tok)
        tl.store(root_ptr + b, tl.load(text_in_ptr + i * width + n_tok - 1))
        tl.store(max_new_ptr + b, budget)
        tl.store(num_generated_ptr + b, 0)
        tl.store(num_steps_ptr + b, 0)
        tl.store(num_new_ptr + b, 0)
        tl.store(finished_ptr + b, 0)
        tl.store(sample_keys_ptr + b, tl.load(keys_ptr + i))
        k = tl.arange(0, BLOCK_K)
        zeros = tl.zeros([BLOCK_K], dtype=tl.int32)
        tl.store(hist_ptr + b * num_k + k, zeros, mask=k < num_k)
        tl.store(sources_ptr + b * num_sources + k, zeros, mask=k < num_sources)
        tl.store(new_tokens_ptr + b * num_new_k + k, zeros + PAD, mask=k < num_new_k)


def _check(state, counters, index, text_in, lens, keys):
    n = index.shape[0]
    if text_in.ndim != 2 or text_in.shape[0] != n or text_in.shape[1] > state.text.shape[1]:
        raise ValueError(
            f"text_in {tuple(text_in.shape)} must be [{n}, W <= {state.text.shape[1]}]"
        )
    for t, name, dtype in ((index, "index", torch.int64), (keys, "keys", torch.int64)):
        if t.shape != (n,) or t.dtype != dtype:
            raise ValueError(f"{name} {tuple(t.shape)} {t.dtype} must be [{n}] {dtype}")
    if lens.shape != (n,) or lens.dtype != torch.int32 or text_in.dtype != torch.int32:
        raise ValueError("lens [n] and text_in [n, W] must be int32")
    rows = state.text.shape[0]
    if not state.text.is_contiguous():  # (written at max_len per row)
        raise ValueError(f"state.text {tuple(state.text.shape)} must be contiguous")
    for name in ("text_len", "prompt_len", "root", "max_new_tokens", "num_generated", "finished"):
        if getattr(state, name).shape != (rows,):
            raise ValueError(f"state.{name} must be [{rows}] like the text's rows")
    names = ("num_steps", "accepted_hist", "source_counts", "num_new", "new_tokens", "sample_keys")
    per_row = {"accepted_hist", "source_counts", "new_tokens"}  # [R, *]; the others [R]
    for name, t in zip(names, counters, strict=True):
        if t.shape[0] != rows or t.ndim != (2 if name in per_row else 1):
            raise ValueError(f"{name} {tuple(t.shape)} must have the state's {rows} rows")
    if any(not t.is_contiguous() for t in (text_in, lens, index, keys, *counters)):
        raise ValueError("load_rows needs contiguous tensors")


def load_rows_triton(state, counters, index, text_in, lens, keys, budget):
    """One launch (module docstring); `counters` = (num_steps, accepted_hist, source_counts,
    num_new, new_tokens, sample_keys)."""
    _check(state, counters, index, text_in, lens, keys)
    num_steps, hist, sources, num_new, new_tokens, sample_keys = counters
    n, width = text_in.shape
    max_len = state.text.shape[1]
    num_k, num_sources, num_new_k = hist.shape[1], sources.shape[1], new_tokens.shape[1]
    grid = (n, triton.cdiv(max_len, _BLOCK))
    _load_rows_kernel[grid](
        text_in,
        lens,
        index,
        keys,
        state.text,
        state.text_len,
        state.prompt_len,
        state.root,
        state.max_new_tokens,
        state.num_generated,
        num_steps,
        num_new,
        state.finished.view(torch.uint8),
        sample_keys,
        hist,
        sources,
        new_tokens,
        budget,
        width,
        max_len,
        num_k,
        num_sources,
        num_new_k,
        PAD=PAD_TOKEN,
        BLOCK=_BLOCK,
        BLOCK_K=triton.next_power_of_2(max(num_k, num_sources, num_new_k)),
    )


def load_rows_ref(state, counters, index, text_in, lens, keys, budget):
    """Reference: the same writes as torch index ops."""
    _check(state, counters, index, text_in, lens, keys)
    num_steps, hist, sources, num_new, new_tokens, sample_keys = counters
    width = text_in.shape[1]
    state.text[:, :width].index_copy_(0, index, text_in)
    state.text[:, width:].index_fill_(0, index, PAD_TOKEN)
    state.text_len.index_copy_(0, index, lens)
    state.prompt_len.index_copy_(0, index, lens)
    state.root.index_copy_(0, index, text_in.gather(1, (lens - 1).long()[:, None])[:, 0])
    state.max_new_tokens.index_fill_(0, index, budget)
    sample_keys.index_copy_(0, index, keys)
    for t in (state.num_generated, num_steps, hist, sources, num_new):
        t.index_fill_(0, index, 0)
    new_tokens.index_fill_(0, index, PAD_TOKEN)
    state.finished.index_fill_(0, index, False)


def load_rows(
    state: DecodeState,
    counters: tuple[torch.Tensor, ...],
    index: torch.Tensor,
    text_in: torch.Tensor,
    lens: torch.Tensor,
    keys: torch.Tensor,
    budget: int,
) -> None:
    impl = load_rows_triton if use_triton(text_in) else load_rows_ref
    impl(state, counters, index, text_in, lens, keys, budget)


_I32 = "*i32"
AOT_SPECS = [
    AotSpec(
        _load_rows_kernel,
        {
            "text_in_ptr": _I32,
            "lens_ptr": _I32,
            "index_ptr": "*i64",
            "keys_ptr": "*i64",
            "text_ptr": _I32,
            "text_len_ptr": _I32,
            "prompt_len_ptr": _I32,
            "root_ptr": _I32,
            "max_new_ptr": _I32,
            "num_generated_ptr": _I32,
            "num_steps_ptr": _I32,
            "num_new_ptr": _I32,
            "finished_ptr": "*u8",
            "sample_keys_ptr": "*i64",
            "hist_ptr": _I32,
            "sources_ptr": _I32,
            "new_tokens_ptr": _I32,
            "budget": "i32",
            "width": "i32",
            "max_len": "i32",
            "num_k": "i32",
            "num_sources": "i32",
            "num_new_k": "i32",
            "PAD": "constexpr",
            "BLOCK": "constexpr",
            "BLOCK_K": "constexpr",
        },
        {"PAD": PAD_TOKEN, "BLOCK": _BLOCK, "BLOCK_K": bk},
    )
    for bk in (8, 16, 32, 64, 128)
]
