"""Prompts into the KV cache: the runner's prefill of `prompt[:-1]` for the requests admitted into
some slots, at the least host and GPU cost.

With CUDA graphs on (CUDA), every admission goes through graphs: the prompts are sorted by length
and cut into calls of at most GRAPH_ROWS prompts (`plan_calls`); each call's prompts are copied
into static input buffers padded to a (rows, width) bucket (powers of two), a CUDA graph of the
runner's prefill into a persistent scratch cache replays, and the scratch rows are copied into the
slots. Why: an eager prefill is ~300 kernel launches, ~20 ms of host time on an H200 whatever the
prompts' length (profiling/profile_step.py), which at batch 1 is the whole prefill and in a refill
stalls every live slot; a replay is one launch. Why sorted calls: a bucket's padding is computed
like real tokens, so one call for a long prompt and eight short ones pads the short ones to the
long one's width; `plan_calls` cuts the sorted prompts where the padding saved outweighs a call's
fixed cost (CALL_TOKENS). Buckets are captured at warm-up (`warm_up`) or on first use.
Without graphs (CPU, or graphs off): one eager prefill per group of at most MAX_TOKENS tokens
(bounding activation memory), in place through a view when the slots are consecutive rows (a new
batch), else into a scratch cache copied into the slots.
Pad rows (length 0) and pad columns are computed and ignored: attention never looks past a
row's length, and only the admitted rows are copied.
With `with_hidden` (a drafter that needs the prompt's hidden states, e.g. an EAGLE head) each call
also returns the runner's last hidden states of prompt[:-1], [n, W, H] (row i: rows[i]).

Example: prompts of 40, 90, 200 and 1,900 tokens into slots [5, 9, 12, 13] -> one call for the
first three (bucket: 4 rows x 256 columns) and one for the last (1 x 2,048), instead of a single
call of 4 x 2,048.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from samgpu.decoding.runners.base import KVCache

GRAPH_ROWS = 16  # prompts per graph call at most (the scratch cache's rows)
MIN_WIDTH = 64  # smallest width bucket
MAX_TOKENS = 1 << 16  # prompt tokens (rows x width) per prefill call at most
MAX_CALL_TOKENS = 2 * MAX_TOKENS  # padded tokens (rows x width buckets) of a graph call at most
CALL_TOKENS = 2048  # a call's fixed cost in padded tokens (H200, SmolLM2: ~1.8 ms ~ 1.5k tokens)


def _bucket(x: int, lo: int = 1) -> int:
    return max(lo, 1 << (max(x, 1) - 1).bit_length())


def call_bucket(rows: int, width: int, max_rows: int, max_len: int) -> tuple[int, int]:
    """The (rows, width) graph bucket of a call: powers of two, at most max_rows x max_len, at
    least MIN_WIDTH columns."""
    return min(_bucket(rows), max_rows), min(_bucket(width, MIN_WIDTH), max_len)


def _powers_up_to(lo: int, hi: int) -> list[int]:
    """lo, 2 lo, 4 lo, ... while below hi, then hi: every bucket call_bucket gives up to hi."""
    out = [lo]
    while out[-1] < hi:
        out.append(min(2 * out[-1], hi))
    return out


def plan_calls(lengths: list[int], max_rows: int, max_len: int) -> list[list[int]]:
    """Prompt indices cut into prefill calls: sorted by length, runs of at most max_rows,
    minimising the sum over calls of CALL_TOKENS + rows bucket x width bucket (dynamic
    programming over the cut points; the host cost is negligible next to a call).
    Example: lengths [1900, 40, 200, 90], 16 rows -> [[1, 3, 2], [0]]."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    n = len(order)
    best = [0] + [None] * n  # best[j]: cost of the first j sorted prompts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_rows), j):
            rows, width = call_bucket(j - i, lengths[order[j - 1]], max_rows, max_len)
            if rows * width > MAX_CALL_TOKENS and j - i > 1:
                continue
            cost = best[i] + CALL_TOKENS + rows * width
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    calls, j = [], n
    while j > 0:
        calls.append(order[cut[j] : j])
        j = cut[j]
    return calls[::-1]


class Prefiller:
    """Writes new requests' prompts into the engine's cache; see the module docstring."""

    def __init__(self, runner, cache, *, use_graphs: bool, with_hidden: bool = False):
        self.runner = runner
        self.cache = cache
        self.with_hidden = with_hidden
        self.use_graphs = use_graphs and runner.device.type == "cuda"
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._graph_rows = min(GRAPH_ROWS, cache.k.shape[1])  # the scratch cache's rows
        self._pool = None
        self._scratch = None  # KVCache of GRAPH_ROWS x max_len, allocated on first refill
        self._input_ids = None  # [GRAPH_ROWS, max_len] int32 static graph input
        self._lengths = None  # [GRAPH_ROWS] int32 static graph input
        self._hidden = None  # [GRAPH_ROWS, max_len, H] static graph output (with_hidden)
        self._side = None  # the stream of `beside` work (graphs only)

    def __call__(
        self,
        rows: list[int],
        index: torch.Tensor,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        host_lengths: list[int],
        beside: Callable[[], None] | None = None,
    ) -> tuple[bool, torch.Tensor | None]:
        """prompt[:-1] (`input_ids [n, W]`, right-padded, `lengths [n]`, the same on the host) of
        the requests admitted into slots `rows` (`index`: the same on the device); sets their
        cache_len. Returns (clean, hidden): clean is False when the call also captured a graph
        (its time is not a prefill's time); hidden is the hidden states [n, W, H] with
        `with_hidden`, else None. `beside`: GPU work independent of the prefill (the engine's
        slot resets and the drafter's start: automata built over the prompts, ~0.5-2 ms on an
        H200), run on a second stream beside the prefill's graphs, which leave most of the GPU
        idle; it waits for what the current stream held before the prefill, and the current
        stream waits for it before returning. Without graphs it simply runs after."""
        n, width = input_ids.shape
        cache = self.cache
        captures = len(self._graphs)
        main = torch.cuda.current_stream(cache.k.device) if self.use_graphs else None
        ready = main.record_event() if main is not None and beside is not None else None
        hidden = None
        if self.with_hidden:
            r = self.runner
            hidden = torch.zeros(n, width, r.hidden_size, dtype=r.dtype, device=r.device)
        if width > 0 and self.use_graphs:
            calls = plan_calls(host_lengths, self._graph_rows, cache.max_len)
            for call in calls:
                w = max(host_lengths[i] for i in call)
                if w == 0:
                    continue
                if len(calls) == 1 and call == sorted(call):  # all prompts in order: views
                    ids, lens, slots = input_ids[:, :w], lengths, index
                    sel = torch.arange(n, device=index.device) if hidden is not None else None
                else:
                    sel = torch.tensor(call, dtype=torch.long, device=index.device)
                    ids, lens, slots = input_ids[sel, :w], lengths[sel], index[sel]
                scratch = self._graph_prefill(ids, lens)
                self._copy_in(slots, scratch, len(call), w)
                if hidden is not None:
                    hidden[:, :w].index_copy_(0, sel, self._hidden[: len(call), :w])
        elif width > 0:
            step = max(1, MAX_TOKENS // width)
            for lo in range(0, n, step):
                hi = min(n, lo + step)
                out = None if hidden is None else hidden[lo:hi]
                self._eager_prefill(
                    rows[lo:hi], index[lo:hi], input_ids[lo:hi], lengths[lo:hi], out
                )
        cache.cache_len.index_copy_(0, index, lengths)
        if beside is not None and ready is None:
            beside()
        elif beside is not None:
            if self._side is None:
                self._side = torch.cuda.Stream(device=cache.k.device)
            self._side.wait_event(ready)
            with torch.cuda.stream(self._side):
                beside()
            main.wait_stream(self._side)
        return len(self._graphs) == captures, hidden

    def _eager_prefill(self, rows, index, input_ids, lengths, hidden_out) -> None:
        n, width = input_ids.shape
        cache = self.cache
        extra = {} if hidden_out is None else {"hidden_out": hidden_out}
        first = rows[0]
        if rows == list(range(first, first + n)):  # consecutive slots: in place, a view
            view = KVCache(
                cache.k[:, first : first + n],
                cache.v[:, first : first + n],
                cache.cache_len[first : first + n],
            )
            self.runner.prefill(input_ids, lengths, view, **extra)
            return
        scratch = self.runner.allocate_cache(n, width)
        self.runner.prefill(input_ids, lengths, scratch, **extra)
        self._copy_in(index, scratch, n, width)

    def _copy_in(self, index: torch.Tensor, scratch: KVCache, n: int, width: int) -> None:
        """Scratch rows 0..n-1 (columns < width) into the cache's slots `index`."""
        cache = self.cache
        cache.k[:, :, :, :width].index_copy_(1, index, scratch.k[:, :n, :, :width])
        cache.v[:, :, :, :width].index_copy_(1, index, scratch.v[:, :n, :, :width])

    def _graph_prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> KVCache:
        """The scratch cache after a graph replay of this call's bucket (n <= the scratch rows)."""
        n, width = input_ids.shape
        rows_b, width_b = call_bucket(n, width, self._graph_rows, self.cache.max_len)
        self._allocate_scratch()
        self._input_ids[:rows_b, :width_b].zero_()
        self._input_ids[:n, :width].copy_(input_ids)
        self._lengths[:rows_b].zero_()
        self._lengths[:n].copy_(lengths)
        key = (rows_b, width_b)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(rows_b, width_b)
        graph.replay()
        return self._scratch

    def warm_up(self) -> None:
        """Capture the buckets that admissions can meet (rows 1, 2, 4, .. up to the scratch's
        rows; widths MIN_WIDTH .. max_len; at most MAX_CALL_TOKENS), so that no admission stalls
        the live slots for a capture (~50 ms each on an H200). A bucket missed here is captured on
        first use."""
        if not self.use_graphs:
            return
        self._allocate_scratch()
        for rows_b in _powers_up_to(1, self._graph_rows):
            for width_b in _powers_up_to(min(MIN_WIDTH, self.cache.max_len), self.cache.max_len):
                if (rows_b, width_b) not in self._graphs and rows_b * width_b <= MAX_CALL_TOKENS:
                    self._capture(rows_b, width_b)

    def _allocate_scratch(self) -> None:
        if self._scratch is None:
            rows, max_len, dev = self._graph_rows, self.cache.max_len, self.runner.device
            self._scratch = self.runner.allocate_cache(rows, max_len)
            self._input_ids = torch.zeros(rows, max_len, dtype=torch.int32, device=dev)
            self._lengths = torch.zeros(rows, dtype=torch.int32, device=dev)
            if self.with_hidden:
                r = self.runner
                shape = (rows, max_len, r.hidden_size)
                self._hidden = torch.zeros(shape, dtype=r.dtype, device=dev)

    def _capture(self, rows_b: int, width_b: int) -> torch.cuda.CUDAGraph:
        ids, lens = self._input_ids[:rows_b, :width_b], self._lengths[:rows_b]
        extra = {} if self._hidden is None else {"hidden_out": self._hidden[:rows_b, :width_b]}
        side = torch.cuda.Stream(device=self.runner.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: Triton compilation, allocator
            self.runner.prefill(ids, lens, self._scratch, **extra)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self.runner.prefill(ids, lens, self._scratch, **extra)
        self._graphs[(rows_b, width_b)] = graph
        return graph
