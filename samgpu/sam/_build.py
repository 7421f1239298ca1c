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

Construction layout (measured: the hash table's cache misses dominate, so most edges avoid it):
- one 32-byte record per state, `st[S, 8]` int32 = length, link, endpos, first token, first dst,
  overflow-list head, degree, (pad): a state's whole record is one cache-line access. Most states
  have a single successor, whose edge is stored inline (the "first edge");
- further edges ("overflow") go to an open-addressing hash table `ht[2 * cap]` int64 of interleaved
  (key = (state << 32) | token, dst) pairs (linear probing, Fibonacci hashing reduced to any table
  size by multiply-shift, load <= 1/2, sized from the expected text length), plus a
  per-state linked list `o_tok[K]`, `o_next[K]` so clone-copy can enumerate a state's edges.
Edges are never deleted (cloning redirects rewrite the dst in place), so the table only grows.

Flattening: offsets from the per-state degrees (prefix sum, leading 0); first edges scattered from
the records, overflow edges by one sequential scan of the hash table; then each state's slice is
sorted by token (insertion sort when short, argsort when long).

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


# Column of each field in the per-state record st[S, ST_WIDTH].
ST_LENGTH, ST_LINK, ST_ENDPOS, ST_FTOK, ST_FDST, ST_OHEAD, ST_DEG = 0, 1, 2, 3, 4, 5, 6
ST_WIDTH: int = 8
NO_TOKEN: int = -1  # no first edge yet
NO_EDGE: int = -1  # end of an overflow list


@numba.njit(cache=True, inline="always")
def _slot(key, cap):
    """Fibonacci hash of key, reduced to [0, cap) by multiply-shift (any cap, not only 2**k)."""
    h = (np.uint64(key) * _FIB) >> np.uint64(32)
    return np.int64((h * np.uint64(cap)) >> np.uint64(32))


@numba.njit(cache=True)
def _ht_find(ht, key):
    """Slot of `key`, or of the empty slot where it would go (linear probing)."""
    cap = ht.shape[0] // 2
    j = _slot(key, cap)
    while ht[2 * j] != _EMPTY_KEY and ht[2 * j] != key:
        j += 1
        if j == cap:
            j = 0
    return j


@numba.njit(cache=True)
def _rehash(ht):
    """Twice the slots, entries reinserted."""
    nt = np.full(2 * ht.shape[0], _EMPTY_KEY, dtype=np.int64)
    for i in range(ht.shape[0] // 2):
        k = ht[2 * i]
        if k != _EMPTY_KEY:
            j = _ht_find(nt, k)
            nt[2 * j] = k
            nt[2 * j + 1] = ht[2 * i + 1]
    return nt


@numba.njit(cache=True)
def _grow_states(st, new_cap):
    out = np.empty((new_cap, ST_WIDTH), dtype=np.int32)
    out[: st.shape[0]] = st
    return out


@numba.njit(cache=True)
def _grow_i32(a, new_cap):
    b = np.empty(new_cap, dtype=np.int32)
    b[: a.shape[0]] = a
    return b


@numba.njit(cache=True)
def new_state_records(cap):
    """Record array with the root (state 0) initialised; other rows are written on creation, so
    the array is left uninitialised (untouched capacity costs no page faults)."""
    st = np.empty((max(cap, 1), ST_WIDTH), dtype=np.int32)
    st[0, ST_LENGTH] = 0
    st[0, ST_LINK] = NO_STATE
    st[0, ST_ENDPOS] = NO_STATE
    st[0, ST_FTOK] = NO_TOKEN
    st[0, ST_FDST] = NO_STATE
    st[0, ST_OHEAD] = NO_EDGE
    st[0, ST_DEG] = 0
    return st


@numba.njit(cache=True)
def sam_extend(
    text,  # [n] int32 tokens to append (already validated to lie in [0, vocab))
    st,  # [cap_S, ST_WIDTH] int32 per-state records (in/out)
    o_tok,  # [cap_K] int32 overflow edge tokens (in/out)
    o_next,  # [cap_K] int32 overflow list links (in/out)
    ht,  # [2 * num_slots] int64 interleaved (key, dst), key EMPTY if free (in/out)
    meta,  # [6] int64: num_states, num_overflow, last, num_tokens, num_slots, num_edges (in/out)
):
    """Append `text` to the automaton. Arrays grow as needed; returns (st, o_tok, o_next, ht)."""
    num_states = meta[0]
    num_over = meta[1]
    last = meta[2]
    pos = meta[3]
    num_edges = meta[5]
    for i in range(text.shape[0]):
        c = np.int64(text[i])
        if num_states + 2 > st.shape[0]:
            st = _grow_states(st, st.shape[0] + st.shape[0] // 2 + 16)
        cur = num_states
        num_states += 1
        st[cur, ST_LENGTH] = st[last, ST_LENGTH] + 1
        st[cur, ST_LINK] = NO_STATE
        st[cur, ST_ENDPOS] = pos
        st[cur, ST_FTOK] = NO_TOKEN
        st[cur, ST_FDST] = NO_STATE
        st[cur, ST_OHEAD] = NO_EDGE
        st[cur, ST_DEG] = 0
        # Walk suffix links from `last`, adding c -> cur until a state already has c.
        p = np.int64(last)
        q = np.int64(NO_STATE)
        while p != NO_STATE:
            ftok = st[p, ST_FTOK]
            if ftok == c:
                q = np.int64(st[p, ST_FDST])
                break
            if ftok == NO_TOKEN:
                st[p, ST_FTOK] = c
                st[p, ST_FDST] = cur
            else:
                key = (p << 32) | c
                j = _ht_find(ht, key)
                if ht[2 * j] == key:
                    q = ht[2 * j + 1]
                    break
                ht[2 * j] = key
                ht[2 * j + 1] = cur
                if num_over + 1 > o_tok.shape[0]:
                    cap = o_tok.shape[0] + o_tok.shape[0] // 2 + 16
                    o_tok = _grow_i32(o_tok, cap)
                    o_next = _grow_i32(o_next, cap)
                o_tok[num_over] = c
                o_next[num_over] = st[p, ST_OHEAD]
                st[p, ST_OHEAD] = num_over
                num_over += 1
                if 2 * num_over > ht.shape[0] // 2:
                    ht = _rehash(ht)
            st[p, ST_DEG] += 1
            num_edges += 1
            p = np.int64(st[p, ST_LINK])
        if p == NO_STATE:
            st[cur, ST_LINK] = 0
        elif st[p, ST_LENGTH] + 1 == st[q, ST_LENGTH]:
            st[cur, ST_LINK] = q
        else:
            clone = num_states
            num_states += 1
            st[clone, ST_LENGTH] = st[p, ST_LENGTH] + 1
            st[clone, ST_LINK] = st[q, ST_LINK]
            st[clone, ST_ENDPOS] = st[q, ST_ENDPOS]
            st[clone, ST_FTOK] = st[q, ST_FTOK]
            st[clone, ST_FDST] = st[q, ST_FDST]
            st[clone, ST_OHEAD] = NO_EDGE
            st[clone, ST_DEG] = st[q, ST_DEG]
            num_edges += st[q, ST_DEG]
            # Clone-copy q's overflow transitions.
            f = st[q, ST_OHEAD]
            while f != NO_EDGE:
                t = np.int64(o_tok[f])
                dst = ht[2 * _ht_find(ht, (q << 32) | t) + 1]
                key = (np.int64(clone) << 32) | t
                j = _ht_find(ht, key)
                ht[2 * j] = key
                ht[2 * j + 1] = dst
                if num_over + 1 > o_tok.shape[0]:
                    cap = o_tok.shape[0] + o_tok.shape[0] // 2 + 16
                    o_tok = _grow_i32(o_tok, cap)
                    o_next = _grow_i32(o_next, cap)
                o_tok[num_over] = t
                o_next[num_over] = st[clone, ST_OHEAD]
                st[clone, ST_OHEAD] = num_over
                num_over += 1
                if 2 * num_over > ht.shape[0] // 2:
                    ht = _rehash(ht)
                f = o_next[f]
            # Redirect the c-edges of p and its suffix-link ancestors from q to the clone.
            while p != NO_STATE:
                if st[p, ST_FTOK] == c:
                    if st[p, ST_FDST] != q:
                        break
                    st[p, ST_FDST] = clone
                else:
                    j = _ht_find(ht, (p << 32) | c)
                    if ht[2 * j + 1] != q:
                        break
                    ht[2 * j + 1] = clone
                p = np.int64(st[p, ST_LINK])
            st[q, ST_LINK] = clone
            st[cur, ST_LINK] = clone
        last = cur
        pos += 1
    meta[0] = num_states
    meta[1] = num_over
    meta[2] = last
    meta[3] = pos
    meta[4] = ht.shape[0] // 2
    meta[5] = num_edges
    return st, o_tok, o_next, ht


@numba.njit(cache=True)
def sam_flatten(
    st,  # [>=S, ST_WIDTH] int32 records
    num_states,  # int
    ht,  # [2 * cap] int64 overflow (key, dst) table
):
    """Records + overflow table -> CSR (edge_offsets[S+1], edge_token[E] sorted, edge_dst[E])."""
    offsets = np.zeros(num_states + 1, dtype=np.int32)
    for s in range(num_states):
        offsets[s + 1] = offsets[s] + st[s, ST_DEG]
    num_edges = offsets[num_states]
    tok = np.empty(num_edges, dtype=np.int32)
    dst = np.empty(num_edges, dtype=np.int32)
    fill = offsets[:num_states].copy()
    for s in range(num_states):
        if st[s, ST_FTOK] != NO_TOKEN:
            tok[fill[s]] = st[s, ST_FTOK]
            dst[fill[s]] = st[s, ST_FDST]
            fill[s] += 1
    for j in range(ht.shape[0] // 2):
        key = ht[2 * j]
        if key != _EMPTY_KEY:
            s = key >> 32
            tok[fill[s]] = key & 0xFFFFFFFF
            dst[fill[s]] = ht[2 * j + 1]
            fill[s] += 1
    for s in range(num_states):
        lo = offsets[s]
        hi = offsets[s + 1]
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
            match_len = min(match_len, length[state])  # see kernels/sam_match.py
        if nxt == NO_STATE:
            state = 0
            match_len = 0
        else:
            state = nxt
            match_len += 1
    return state, match_len
