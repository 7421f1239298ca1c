"""@triton.jit helpers and their host twins shared by the store kernels (sam_store,
sam_store_match, and the store parts of sam_update and sam_draft): the packed transition table
of a store generation (layout: kernels/sam_store.py), the launch scalars, batch checks, and numpy
views for the loop-level references. Called as module attributes (`J.store_probe(...)`), so they
are inlined into each kernel (this module has no kernel of its own)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from samgpu.kernels._sam_jit import check_automaton_arrays
from samgpu.kernels.types import NO_EDGE, NO_POSITION, NO_STATE, ROOT_STATE

NUM_GENERATIONS: int = 2
EMPTY: int = -1  # free hash entry
CLEAR_BLOCK: int = 1024  # entries cleared per vector store on a rotation
# the sentinels as seen from inside @triton.jit code
C_EMPTY = tl.constexpr(EMPTY)
C_NO_STATE = tl.constexpr(NO_STATE)
C_NO_EDGE = tl.constexpr(NO_EDGE)
C_NO_POSITION = tl.constexpr(NO_POSITION)
C_ROOT = tl.constexpr(ROOT_STATE)
_HASH_MUL_STATE: int = 2654435761  # as sam_dynamic's table: golden-ratio Fibonacci multiplier
_HASH_MUL_MIX: int = 2246822519  # murmur3 constant

FIELDS_STATE = ("length", "link", "endpos", "first_edge")  # [G, 2C] int32
FIELDS_EDGE = ("edge_next", "edge_slot")  # [G, 3C] int32
FIELDS_GEN = ("num_states", "num_edges", "last", "text_len", "num_docs")  # [G] int32


def hash_size(capacity: int) -> int:
    """Entries of one generation's transition table: a power of two >= 4C."""
    return triton.next_power_of_2(max(16, 4 * capacity))


def packing(capacity: int, vocab_size: int) -> tuple[int, int]:
    """(t_bits, s_bits) of the packed table entries; ValueError when they exceed 63 bits."""
    t_bits = int(vocab_size).bit_length()  # the separator V fits too
    s_bits = (2 * capacity - 1).bit_length()
    if 2 * s_bits + t_bits > 63:
        raise ValueError(
            f"a store generation of {capacity} tokens with a vocabulary of {vocab_size} ids needs "
            f"{2 * s_bits + t_bits} bits per transition (at most 63): lower store_tokens to at "
            f"most {2 * max_capacity(vocab_size)}"
        )
    return t_bits, s_bits


def max_capacity(vocab_size: int) -> int:
    """Largest generation capacity C whose packing fits 63 bits for this vocabulary."""
    s_bits = (63 - int(vocab_size).bit_length()) // 2
    return 1 << (s_bits - 1)


@triton.jit
def store_slot(state, token, h_shift):
    """Home slot of key (state, token) in a table of 2**(32 - h_shift) entries (uint32 math)."""
    x = state.to(tl.uint32) * 2654435761 + token.to(tl.uint32)
    return ((x * 2246822519) >> h_shift.to(tl.uint32)).to(tl.int32)


def slot_py(state: int, token: int, h_shift: int) -> int:
    x = ((state & 0xFFFFFFFF) * _HASH_MUL_STATE + (token & 0xFFFFFFFF)) & 0xFFFFFFFF
    return ((x * _HASH_MUL_MIX) & 0xFFFFFFFF) >> h_shift


@triton.jit
def store_probe(hash_ptr, state, token, t_bits, s_bits, h_shift, h_mask):
    """(slot, entry): the entry keyed (state, token), or EMPTY and the free slot ending it."""
    key = (state.to(tl.int64) << t_bits.to(tl.int64)) | token.to(tl.int64)
    j = store_slot(state, token, h_shift)
    entry = tl.load(hash_ptr + j)
    while (entry != C_EMPTY) & ((entry >> s_bits.to(tl.int64)) != key):
        j = (j + 1) & h_mask
        entry = tl.load(hash_ptr + j)
    return j, entry


@triton.jit
def pack(src, token, dst, t_bits, s_bits):
    key = (src.to(tl.int64) << t_bits.to(tl.int64)) | token.to(tl.int64)
    return (key << s_bits.to(tl.int64)) | dst.to(tl.int64)


def scalars(store) -> dict[str, int]:
    """The launch scalars of a store (an object with the arrays above and vocab_size)."""
    capacity, hash_slots = store.tokens.shape[1], store.hash.shape[1]
    t_bits, s_bits = packing(capacity, store.vocab_size)
    return {
        "capacity": capacity,
        "hash_slots": hash_slots,
        "h_shift": 32 - (hash_slots.bit_length() - 1),
        "h_mask": hash_slots - 1,
        "t_bits": t_bits,
        "s_bits": s_bits,
        "max_reqs": store.match_state.shape[1],
    }


def check_arrays(store, device: torch.device) -> None:
    """ValueError unless every array of `store` is contiguous int32 (hash: int64) on `device` at
    the shape the kernels address it with. Generation g's row of an array starts at g * (its
    width), the widths taken from C = tokens.shape[1] (2C states, 3C edges), H = hash.shape[1]
    and R = match_state.shape[1] (match_len shares it), so an array of another width would be
    read or written past its end; G = NUM_GENERATIONS rows, since a rotation moves to generation
    1 - active. H must be hash_size(C): a smaller table could fill up, and one of another size
    breaks the probe's `& (H - 1)`; either way a probe could go round for ever."""
    tokens, match_state = store.tokens, store.match_state
    g = NUM_GENERATIONS
    if tokens.ndim != 2 or tokens.shape[0] != g or tokens.shape[1] < 2:
        raise ValueError(f"store.tokens must be [G={g}, C >= 2], got {tuple(tokens.shape)}")
    if match_state.ndim != 2 or match_state.shape[0] != g:
        raise ValueError(f"store.match_state must be [G={g}, R], got {tuple(match_state.shape)}")
    c, r = tokens.shape[1], match_state.shape[1]
    want = {"tokens": (g, c), "hash": (g, hash_size(c)), "active": (1,), "num_rotations": (1,)}
    want |= dict.fromkeys(FIELDS_STATE, (g, 2 * c)) | dict.fromkeys(FIELDS_EDGE, (g, 3 * c))
    want |= dict.fromkeys(FIELDS_GEN, (g,)) | dict.fromkeys(("match_state", "match_len"), (g, r))
    context = f"tokens {tuple(tokens.shape)}, match_state {tuple(match_state.shape)}"
    check_automaton_arrays(store, "store", want, device, context)


def check_batch(store, new_tokens: torch.Tensor, num_new: torch.Tensor) -> None:
    """ValueError unless new_tokens [B, K] int32 (unit stride), num_new [B] int32 suit `store`
    (B <= R) and the store's arrays their shapes (`check_arrays`)."""
    if new_tokens.ndim != 2 or new_tokens.dtype != torch.int32 or new_tokens.stride(1) != 1:
        raise ValueError(
            f"new_tokens must be [B, K] int32 with unit stride along K, got "
            f"{tuple(new_tokens.shape)} {new_tokens.dtype}"
        )
    b = new_tokens.shape[0]
    if num_new.shape != (b,) or num_new.dtype != torch.int32 or not num_new.is_contiguous():
        raise ValueError(
            f"num_new must be a contiguous [B] int32 tensor with B={b}, got "
            f"{tuple(num_new.shape)} {num_new.dtype}"
        )
    check_arrays(store, new_tokens.device)
    if b > store.match_state.shape[1]:
        raise ValueError(f"batch of {b} sequences but the store has {store.match_state.shape[1]}")


class HostArrays:
    """numpy views of a store's arrays (shared memory on the CPU, copied back from elsewhere)."""

    NAMES = (*FIELDS_STATE, *FIELDS_EDGE, "hash", "tokens", *FIELDS_GEN, "active")
    NAMES += ("num_rotations", "match_state", "match_len")

    def __init__(self, store):
        self.store = store
        self.a = {n: getattr(store, n).cpu().numpy() for n in self.NAMES}

    def write_back(self) -> None:
        for n, arr in self.a.items():
            t = getattr(self.store, n)
            if t.device.type != "cpu":
                t.copy_(torch.from_numpy(arr))


def find_py(table, s: int, t: int, t_bits: int, s_bits: int, shift: int) -> tuple[int, int]:
    """(slot, entry) of key (s, t), or (free slot ending the probe, EMPTY)."""
    key = (s << t_bits) | t
    j = slot_py(s, t, shift)
    hmask = table.shape[0] - 1
    while True:
        e = int(table[j])
        if e == EMPTY or e >> s_bits == key:
            return j, e
        j = (j + 1) & hmask
