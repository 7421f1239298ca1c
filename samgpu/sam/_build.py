"""Numba core of the suffix-automaton build: online construction, CSR flattening, occurrence counts.

Algorithm: the classic online suffix-automaton construction (Blumer et al.), one token at a time
over the concatenated text, with the two facts samgpu relies on:
- `endpos[s]` is the EARLIEST end position (0-based index into the text of the occurrence's last
  token) of the strings of state s. A new state gets the position of the token just added; a clone
  copies its source's `endpos` (the clone's end-position set is the source's plus later
  positions, so its minimum is the source's).
- `count[s]` is the size of the end-position set: 1 for every non-clone state, 0 for clones and the
  root, then summed into the suffix link in decreasing `length` order (so `count[root] = T`).
  A state is a non-clone exactly when `length[s] == endpos[s] + 1` (the state of a whole prefix);
  a clone is always shorter than its source's prefix, so no flag array is needed.

Transitions during construction (memory ~36 bytes per edge, all flat int32/int64 arrays):
- per-state singly linked edge lists `head[S]`, `e_next[E]`, `e_tok[E]`, `e_dst[E]` (clone-copy
  walks the source's list), and
- an open-addressing hash table (linear probing, Fibonacci hashing, load <= 1/2) keyed by
  `(state << 32) | token` -> edge index, for O(1) lookup and the redirect step of cloning.
Edges are never deleted (redirects rewrite `e_dst` in place), so the table only grows.

Flattening: per-state degree from the lists, prefix sum into `edge_offsets[S+1]` (leading 0),
scatter, then sort each state's slice by token (insertion sort when short, argsort when long).

Example: text "a b a" (ids 0 1 0): states 0:root, 1:"a"(len1,endpos0), 2:"ab"/"b"(len2,endpos1),
3:"aba"/"ba"(len3,endpos2); link = [-1, 0, 0, 1]; count = [3, 2, 1, 1]; root edges {0:1, 1:2}.
"""

from __future__ import annotations

import numba
import numpy as np

NO_STATE: int = -1  # same value as samgpu.types.NO_STATE
_EMPTY_KEY: int = -1  # free hash slot
_FIB: np.uint64 = np.uint64(0x9E3779B97F4A7C15)
_SHORT_SLICE: int = 24  # insertion sort below this many edges


@numba.njit(cache=True, inline="always")
def _slot(key, shift, mask):
    return np.int64((np.uint64(key) * _FIB) >> np.uint64(shift)) & mask


@numba.njit(cache=True)
def _rehash(hkeys, hvals, bits):
    """Double the table: returns (new_keys, new_vals, new_bits)."""
    nbits = bits + 1
    cap = np.int64(1) << nbits
    mask = cap - 1
    shift = 64 - nbits
    nkeys = np.full(cap, _EMPTY_KEY, dtype=np.int64)
    nvals = np.empty(cap, dtype=np.int32)
    for i in range(hkeys.shape[0]):
        k = hkeys[i]
        if k != _EMPTY_KEY:
            j = _slot(k, shift, mask)
            while nkeys[j] != _EMPTY_KEY:
                j = (j + 1) & mask
            nkeys[j] = k
            nvals[j] = hvals[i]
    return nkeys, nvals, nbits


@numba.njit(cache=True)
def _grow_i32(a, new_cap):
    b = np.empty(new_cap, dtype=np.int32)
    b[: a.shape[0]] = a
    return b


@numba.njit(cache=True)
def sam_extend(
    text,  # [n] int32 tokens to append (already validated to lie in [0, vocab))
    length,  # [cap_S] int32 (in/out)
    link,  # [cap_S] int32 (in/out)
    endpos,  # [cap_S] int32 (in/out)
    head,  # [cap_S] int32 first edge of each state's list, NO_STATE if none (in/out)
    e_next,  # [cap_E] int32 (in/out)
    e_tok,  # [cap_E] int32 (in/out)
    e_dst,  # [cap_E] int32 (in/out)
    hkeys,  # [2**bits] int64 (in/out)
    hvals,  # [2**bits] int32 edge index per key (in/out)
    meta,  # [5] int64: num_states, num_edges, last, num_tokens, bits (in/out)
):
    """Append `text` to the automaton. Arrays grow as needed; returns them (maybe reallocated)."""
    num_states = meta[0]
    num_edges = meta[1]
    last = meta[2]
    pos = meta[3]
    bits = meta[4]
    mask = (np.int64(1) << bits) - 1
    shift = 64 - bits
    for i in range(text.shape[0]):
        c = np.int64(text[i])
        if num_states + 2 > length.shape[0]:
            cap = length.shape[0] + length.shape[0] // 2 + 16
            length = _grow_i32(length, cap)
            link = _grow_i32(link, cap)
            endpos = _grow_i32(endpos, cap)
            head = _grow_i32(head, cap)
        cur = num_states
        num_states += 1
        length[cur] = length[last] + 1
        endpos[cur] = pos
        head[cur] = NO_STATE
        link[cur] = NO_STATE
        # Walk suffix links from `last`, adding c -> cur until a state already has c.
        p = np.int64(last)
        q = np.int64(NO_STATE)
        while p != NO_STATE:
            key = (p << 32) | c
            j = _slot(key, shift, mask)
            while hkeys[j] != _EMPTY_KEY and hkeys[j] != key:
                j = (j + 1) & mask
            if hkeys[j] == key:
                q = np.int64(e_dst[hvals[j]])
                break
            if num_edges + 1 > e_next.shape[0]:
                cap = e_next.shape[0] + e_next.shape[0] // 2 + 16
                e_next = _grow_i32(e_next, cap)
                e_tok = _grow_i32(e_tok, cap)
                e_dst = _grow_i32(e_dst, cap)
            e = num_edges
            num_edges += 1
            e_tok[e] = c
            e_dst[e] = cur
            e_next[e] = head[p]
            head[p] = e
            hkeys[j] = key
            hvals[j] = e
            if 2 * num_edges > hkeys.shape[0]:
                hkeys, hvals, bits = _rehash(hkeys, hvals, bits)
                mask = (np.int64(1) << bits) - 1
                shift = 64 - bits
            p = np.int64(link[p])
        if p == NO_STATE:
            link[cur] = 0
        elif length[p] + 1 == length[q]:
            link[cur] = q
        else:
            clone = num_states
            num_states += 1
            length[clone] = length[p] + 1
            link[clone] = link[q]
            endpos[clone] = endpos[q]
            head[clone] = NO_STATE
            # Clone-copy q's transitions.
            f = head[q]
            while f != NO_STATE:
                if num_edges + 1 > e_next.shape[0]:
                    cap = e_next.shape[0] + e_next.shape[0] // 2 + 16
                    e_next = _grow_i32(e_next, cap)
                    e_tok = _grow_i32(e_tok, cap)
                    e_dst = _grow_i32(e_dst, cap)
                e = num_edges
                num_edges += 1
                t = np.int64(e_tok[f])
                e_tok[e] = t
                e_dst[e] = e_dst[f]
                e_next[e] = head[clone]
                head[clone] = e
                key = (np.int64(clone) << 32) | t
                j = _slot(key, shift, mask)
                while hkeys[j] != _EMPTY_KEY:
                    j = (j + 1) & mask
                hkeys[j] = key
                hvals[j] = e
                if 2 * num_edges > hkeys.shape[0]:
                    hkeys, hvals, bits = _rehash(hkeys, hvals, bits)
                    mask = (np.int64(1) << bits) - 1
                    shift = 64 - bits
                f = e_next[f]
            # Redirect p's ancestors' c-edges from q to the clone.
            while p != NO_STATE:
                key = (p << 32) | c
                j = _slot(key, shift, mask)
                while hkeys[j] != key:
                    j = (j + 1) & mask
                e = hvals[j]
                if e_dst[e] != q:
                    break
                e_dst[e] = clone
                p = np.int64(link[p])
            link[q] = clone
            link[cur] = clone
        last = cur
        pos += 1
    meta[0] = num_states
    meta[1] = num_edges
    meta[2] = last
    meta[3] = pos
    meta[4] = bits
    return length, link, endpos, head, e_next, e_tok, e_dst, hkeys, hvals


@numba.njit(cache=True)
def sam_flatten(
    num_states,  # int
    head,  # [>=S] int32
    e_next,  # [>=E] int32
    e_tok,  # [>=E] int32
    e_dst,  # [>=E] int32
):
    """Linked edge lists -> CSR (edge_offsets[S+1], edge_token[E] sorted per state, edge_dst[E])."""
    offsets = np.zeros(num_states + 1, dtype=np.int32)
    for s in range(num_states):
        d = 0
        f = head[s]
        while f != NO_STATE:
            d += 1
            f = e_next[f]
        offsets[s + 1] = offsets[s] + d
    num_edges = offsets[num_states]
    tok = np.empty(num_edges, dtype=np.int32)
    dst = np.empty(num_edges, dtype=np.int32)
    for s in range(num_states):
        lo = offsets[s]
        hi = offsets[s + 1]
        k = lo
        f = head[s]
        while f != NO_STATE:
            tok[k] = e_tok[f]
            dst[k] = e_dst[f]
            k += 1
            f = e_next[f]
        if hi - lo <= _SHORT_SLICE:
            for a in range(lo + 1, hi):
                t = tok[a]
                v = dst[a]
                b = a - 1
                while b >= lo and tok[b] > t:
                    tok[b + 1] = tok[b]
                    dst[b + 1] = dst[b]
                    b -= 1
                tok[b + 1] = t
                dst[b + 1] = v
        else:
            order = np.argsort(tok[lo:hi])
            tt = tok[lo:hi][order]
            dd = dst[lo:hi][order]
            tok[lo:hi] = tt
            dst[lo:hi] = dd
    return offsets, tok, dst


@numba.njit(cache=True)
def sam_counts(
    length,  # [S] int32
    link,  # [S] int32
    endpos,  # [S] int32
):
    """count[s] = |endpos set of s|: 1 per non-clone state, summed into links by falling length."""
    num_states = length.shape[0]
    max_len = 0
    for s in range(num_states):
        if length[s] > max_len:
            max_len = length[s]
    # Counting sort of states by length.
    bucket = np.zeros(max_len + 2, dtype=np.int64)
    for s in range(num_states):
        bucket[length[s] + 1] += 1
    for i in range(1, max_len + 2):
        bucket[i] += bucket[i - 1]
    order = np.empty(num_states, dtype=np.int32)
    for s in range(num_states):
        order[bucket[length[s]]] = s
        bucket[length[s]] += 1
    count = np.zeros(num_states, dtype=np.int32)
    for s in range(1, num_states):
        if length[s] == endpos[s] + 1:
            count[s] = 1
    for i in range(num_states - 1, 0, -1):
        s = order[i]
        if link[s] != NO_STATE:
            count[link[s]] += count[s]
    return count


@numba.njit(cache=True)
def sam_root_next(
    vocab_size,  # int
    edge_offsets,  # [S+1] int32
    edge_token,  # [E] int32
    edge_dst,  # [E] int32
):
    """Dense root row: root_next[v] = transition of the root on token v, NO_STATE if absent."""
    out = np.full(vocab_size, NO_STATE, dtype=np.int32)
    for k in range(edge_offsets[0], edge_offsets[1]):
        out[edge_token[k]] = edge_dst[k]
    return out


@numba.njit(cache=True)
def sam_longest_match(
    query,  # [n] int64 tokens
    edge_offsets,  # [S+1] int32
    edge_token,  # [E] int32
    edge_dst,  # [E] int32
    length,  # [S] int32
    link,  # [S] int32
):
    """Match `query` from the root (DESIGN.md §3 rule); returns (state, match_len)."""
    state = 0
    match_len = 0
    for i in range(query.shape[0]):
        c = query[i]
        nxt = NO_STATE
        while True:
            lo = edge_offsets[state]
            hi = edge_offsets[state + 1]
            while lo < hi:
                mid = (lo + hi) >> 1
                if edge_token[mid] < c:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < edge_offsets[state + 1] and edge_token[lo] == c:
                nxt = edge_dst[lo]
                break
            if state == 0:
                break
            state = link[state]
            match_len = length[state]
        if nxt == NO_STATE:
            state = 0
            match_len = 0
        else:
            state = nxt
            match_len += 1
    return state, match_len


@numba.njit(cache=True)
def sam_check(
    length,  # [S] int32
    link,  # [S] int32
    endpos,  # [S] int32
    count,  # [S] int32
    edge_offsets,  # [S+1] int32
    edge_token,  # [E] int32
    edge_dst,  # [E] int32
    num_tokens,  # int
    vocab_size,  # int
):
    """Structural invariants; returns 0 if fine, else a code (see SamIndex.validate)."""
    num_states = length.shape[0]
    num_edges = edge_token.shape[0]
    if edge_offsets[0] != 0 or edge_offsets[num_states] != num_edges:
        return 1
    for s in range(num_states):
        lo = edge_offsets[s]
        hi = edge_offsets[s + 1]
        if hi < lo:
            return 2
        for k in range(lo, hi):
            if edge_token[k] < 0 or edge_token[k] >= vocab_size:
                return 3
            if k > lo and edge_token[k] <= edge_token[k - 1]:
                return 4
            d = edge_dst[k]
            if d <= 0 or d >= num_states:
                return 5
            if length[d] <= length[s]:
                return 6
    if link[0] != NO_STATE or length[0] != 0:
        return 7
    for s in range(1, num_states):
        if link[s] < 0 or link[s] >= num_states or length[link[s]] >= length[s]:
            return 8
        if endpos[s] < 0 or endpos[s] >= num_tokens or length[s] > endpos[s] + 1:
            return 9
        if count[s] < 1 or count[s] > count[link[s]]:
            return 10
    return 0
