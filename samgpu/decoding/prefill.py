"""Prompts into the KV cache: the runner's prefill of `prompt[:-1]` for the requests admitted into
some slots, at the least host cost.

Three ways, chosen per call (per group of rows: a large admission is split so that one prefill
holds at most MAX_TOKENS prompt tokens, which bounds its activation memory at large batches):
- at most GRAPH_ROWS prompts with CUDA graphs on (a refill in continuous batching, every prompt
  at batch 1): the prompts are copied into static input buffers padded to a (rows, width) bucket
  (powers of two, rows <= GRAPH_ROWS), and a CUDA graph of the runner's prefill into a persistent
  scratch cache replays; the scratch rows are then copied into the slots. An eager prefill is
  ~300 kernel launches, ~20 ms of host time on an H200 whatever the prompt's length (measured:
  profiling/profile_step.py), which at batch 1 is the prefill and in a refill stalls every live
  slot; the replay is one launch. Each bucket is captured on first use (one eager warm-up, then
  the capture);
- more prompts in consecutive rows (a new batch): the runner prefills the engine's cache in
  place, through a view of those rows;
- otherwise: an eager prefill into a scratch cache of the n rows, copied into the slots.
Pad rows (length 0) and pad columns are computed and ignored: attention never looks past a
row's length, and only the admitted rows are copied.

Example: 3 prompts of 40, 90 and 200 tokens into slots [5, 9, 12] -> bucket (4 rows, 256
columns): one replay, then rows 0..2 of the scratch cache (columns < 256) go to slots 5, 9, 12.
"""

from __future__ import annotations

import torch

from samgpu.decoding.runners.base import KVCache

GRAPH_ROWS = 16  # admissions of at most this many prompts replay graphs (the scratch cache's rows)
MIN_WIDTH = 64  # smallest width bucket
MAX_TOKENS = 1 << 16  # prompt tokens (rows x width) per prefill call at most


def _bucket(x: int, lo: int = 1) -> int:
    return max(lo, 1 << (max(x, 1) - 1).bit_length())


class Prefiller:
    """Writes new requests' prompts into the engine's cache; see the module docstring."""

    def __init__(self, runner, cache, *, use_graphs: bool):
        self.runner = runner
        self.cache = cache
        self.use_graphs = use_graphs and runner.device.type == "cuda"
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._graph_rows = min(GRAPH_ROWS, cache.k.shape[1])  # the scratch cache's rows
        self._pool = None
        self._scratch = None  # KVCache of GRAPH_ROWS x max_len, allocated on first refill
        self._input_ids = None  # [GRAPH_ROWS, max_len] int32 static graph input
        self._lengths = None  # [GRAPH_ROWS] int32 static graph input

    def __call__(
        self, rows: list[int], index: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor
    ) -> bool:
        """prompt[:-1] (`input_ids [n, W]`, right-padded, `lengths [n]`) of the requests admitted
        into slots `rows` (`index`: the same on the device); sets their cache_len. Returns False
        when the call also captured a graph (its time is not a prefill's time)."""
        n, width = input_ids.shape
        cache = self.cache
        captures = len(self._graphs)
        if width > 0:
            step = max(1, MAX_TOKENS // width)
            for lo in range(0, n, step):
                hi = min(n, lo + step)
                self._prefill_rows(rows[lo:hi], index[lo:hi], input_ids[lo:hi], lengths[lo:hi])
        cache.cache_len.index_copy_(0, index, lengths)
        return len(self._graphs) == captures

    def _prefill_rows(self, rows, index, input_ids, lengths) -> None:
        n, width = input_ids.shape
        cache = self.cache
        scratch = self._graph_prefill(input_ids, lengths)
        if scratch is None:
            first = rows[0]
            if rows == list(range(first, first + n)):  # consecutive slots: in place, a view
                view = KVCache(
                    cache.k[:, first : first + n],
                    cache.v[:, first : first + n],
                    cache.cache_len[first : first + n],
                )
                self.runner.prefill(input_ids, lengths, view)
                return
            scratch = self.runner.allocate_cache(n, width)
            self.runner.prefill(input_ids, lengths, scratch)
        cache.k[:, :, :, :width].index_copy_(1, index, scratch.k[:, :n, :, :width])
        cache.v[:, :, :, :width].index_copy_(1, index, scratch.v[:, :n, :, :width])

    def _graph_prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor):
        """The scratch cache after a graph replay for this bucket, or None (no graphs here)."""
        n, width = input_ids.shape
        if not self.use_graphs or n > self._graph_rows:
            return None
        rows_b = min(_bucket(n), self._graph_rows)
        width_b = min(_bucket(width, MIN_WIDTH), self.cache.max_len)
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
        rows; widths MIN_WIDTH .. max_len; at most 2 * MAX_TOKENS tokens), so that no admission
        stalls the live slots for a capture (~50 ms each on an H200). A bucket missed here is
        captured on first use."""
        if not self.use_graphs:
            return
        self._allocate_scratch()
        max_len, rows_b = self.cache.max_len, 1
        while True:
            width_b = MIN_WIDTH
            while True:
                width_b = min(width_b, max_len)
                if (rows_b, width_b) not in self._graphs and rows_b * width_b <= 2 * MAX_TOKENS:
                    self._capture(rows_b, width_b)
                if width_b >= max_len:
                    break
                width_b *= 2
            if rows_b >= self._graph_rows:
                break
            rows_b = min(2 * rows_b, self._graph_rows)

    def _allocate_scratch(self) -> None:
        if self._scratch is None:
            rows, max_len, dev = self._graph_rows, self.cache.max_len, self.runner.device
            self._scratch = self.runner.allocate_cache(rows, max_len)
            self._input_ids = torch.zeros(rows, max_len, dtype=torch.int32, device=dev)
            self._lengths = torch.zeros(rows, dtype=torch.int32, device=dev)

    def _capture(self, rows_b: int, width_b: int) -> torch.cuda.CUDAGraph:
        ids, lens = self._input_ids[:rows_b, :width_b], self._lengths[:rows_b]
        side = torch.cuda.Stream(device=self.runner.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: Triton compilation, allocator
            self.runner.prefill(ids, lens, self._scratch)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self.runner.prefill(ids, lens, self._scratch)
        self._graphs[(rows_b, width_b)] = graph
        return graph
