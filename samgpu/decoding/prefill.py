"""Prompts into the KV cache: the runner's prefill of `prompt[:-1]` for the requests admitted into
some slots, at the least host and GPU cost.

Packed (a runner with `packs_prompts` on CUDA, more than one slot: `packs_by_default`): an
admission's prompts are concatenated into one row (`plan_packs`: in order, at most `capacity`
tokens per call), each token attending to its own prompt only (`segment_start`, see
kernels/prefill_attention.py), so a call computes its real tokens plus the tail to its width
bucket (powers of two and 3/4 of them: less than half more); the scratch row's K/V columns then
go to the slots' columns in one launch (kernels/kv_scatter.py). With graphs a call is a replay of
the captured graph of its width bucket. Why: padded calls (below) pad every prompt to the call's
longest; on bench_serve's prompt file that computed 1.4x the real tokens for one prompt and
1.9-2.3x for refills of 2-16 (profiling/prefill_padding.py), and an H200 prefill costs ~0.85 us
per computed token. On CPU the attention reference would build the packed square mask: prompts
stay padded there.

Padded (the other runners, exact mode, CPU, one slot). With CUDA graphs on, every admission goes
through graphs: the prompts are sorted by length and cut into calls of at most GRAPH_ROWS prompts
(`plan_calls`); each call's prompts are copied into static input buffers padded to a (rows, width)
bucket (powers of two), a CUDA graph of the runner's prefill into a persistent scratch cache
replays, and the scratch rows are copied into the slots (a one-slot cache is its own scratch: no
copy; B=1, 1,000 tokens: two ~19 us copies on an H200). Why graphs: an eager prefill is ~300
kernel launches, ~20 ms of host time on an H200 whatever the prompts' length
(profiling/profile_step.py), which at batch 1 is the whole prefill and in a refill stalls every
live slot; a replay is one launch. Why sorted calls: a bucket's padding is computed like real
tokens (one long prompt would pad eight short ones to its width); `plan_calls` cuts the sorted
prompts where the padding saved outweighs a call's fixed cost (CALL_TOKENS). Buckets are captured
at warm-up (`warm_up`) or on first use. Without graphs (CPU, or graphs off): one eager prefill
per group of at most MAX_TOKENS tokens, in place through a view when the slots are consecutive
rows (a new batch), else into a scratch cache copied into the slots. Pad rows and columns are
computed and ignored (attention never looks past a row's length; only admitted rows are copied).
With `with_hidden` (a drafter that reads the prompts' hidden states, e.g. an EAGLE head) a call
also returns the runner's last hidden states of prompt[:-1], [n, W, H] (row i: rows[i]).

In two halves (`launch`, then `Landing.land`; packed graph calls and eager calls, `defers`): the
prefill into the scratch, with graphs on a second stream beside the live slots' decode steps,
then the move into the slots at the next host check (the scheduler's overlapped admissions).

Example: prompts of 40, 90, 200 and 1,900 tokens into slots [5, 9, 12, 13]. Padded: one call for
the first three (bucket: 4 rows x 256 columns) and one for the last (1 x 2,048), instead of a
single call of 4 x 2,048. Packed: one call of 2,230 tokens (bucket 3,072 columns).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from samgpu.decoding.buffers import aligned_len, copy_to_device, upload, upload_rows
from samgpu.decoding.prefill_plan import (
    GRAPH_ROWS,
    MAX_CALL_TOKENS,
    MAX_TOKENS,
    MIN_WIDTH,
    call_bucket,
    pack_bucket,
    pack_buckets,
    pack_capacity,
    plan_calls,
    plan_packs,
    powers_up_to,
)
from samgpu.decoding.runners.base import KVCache
from samgpu.decoding.streams import private_stream
from samgpu.kernels.kv_scatter import kv_scatter


def packs_by_default(runner, slots: int) -> bool:
    """Packed calls where the runner packs prompts, on CUDA (on CPU the attention reference would
    compute the packed square), for a cache of more than one slot: with one slot every admission
    is one prompt, which a padded call computes with less host work before its replay (H200,
    prefill_padding --time, median ms: 1.38 padded vs 1.50 packed with the one-copy staging,
    1.50-1.60 vs 1.76-1.86 before it)."""
    packs = bool(getattr(runner, "packs_prompts", False))
    return packs and runner.device.type == "cuda" and slots > 1


@dataclass
class _Packed:
    """A packed call on its way (Prefiller._packed_call): its inputs, width, tokens and the
    scratch it fills."""

    meta: torch.Tensor
    width: int
    total: int
    scratch: KVCache
    hidden: torch.Tensor | None


@dataclass
class Landing:
    """After Prefiller.launch: `land()` moves the `count` prompts' K/V into their slots (current
    stream, after the launch's work), sets cache_len; returns hidden states with `with_hidden`."""

    count: int
    land: Callable[[], torch.Tensor | None]
    events: list[torch.cuda.Event] | None = None  # start, end of the launch's GPU work
    beside_ran: bool = False  # the launch's `beside` ran (on its stream, before `events[1]`)

    def gpu_seconds(self) -> float | None:
        """The launch's GPU time once it is done (beside decode steps: their share included)."""
        if self.events is None or not self.events[1].query():
            return None
        return self.events[0].elapsed_time(self.events[1]) / 1000


class Prefiller:
    """Writes new requests' prompts into the engine's cache; see the module docstring."""

    def __init__(
        self,
        runner,
        cache,
        *,
        use_graphs: bool,
        with_hidden: bool = False,
        pack: bool | None = None,
    ):
        """`pack`: packed calls (default: `packs_by_default`)."""
        self.runner = runner
        self.cache = cache
        self.with_hidden = with_hidden
        self.use_graphs = use_graphs and runner.device.type == "cuda"
        if pack and not getattr(runner, "packs_prompts", False):
            raise ValueError(f"Prefiller: {type(runner).__name__} does not pack prompts here")
        self.pack = packs_by_default(runner, cache.k.shape[1]) if pack is None else pack
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._graph_rows = min(GRAPH_ROWS, cache.k.shape[1])  # the scratch cache's rows
        # tokens of a packed call at most
        self.capacity = pack_capacity(self._graph_rows, cache.max_len) if self.pack else 0
        self._pool = None
        # Graph inputs and outputs, allocated on first use: packed, one row of `capacity` tokens;
        # padded, GRAPH_ROWS rows of max_len.
        self._scratch = None  # KVCache
        self._stage = None  # packed: every input of a call, int32 (_packed_call)
        self._input_ids = None  # padded: [rows, width] int32
        self._lengths = None  # padded: [rows] int32
        self._hidden = None  # [rows, width, H] (with_hidden)
        self._side = None  # the stream of `beside` work (graphs only)

    def __call__(
        self,
        rows: list[int],
        index: torch.Tensor,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        prompts: list[list[int]],
        beside: Callable[[], None] | None = None,
    ) -> tuple[bool, torch.Tensor | None]:
        """prompt[:-1] (`input_ids [n, W]`, right-padded, `lengths [n]`; `prompts`: the same on
        the host) of the requests admitted into slots `rows` (`index` on the device); sets their
        cache_len. Returns (clean: False when the call also captured a graph, hidden [n, W, H]
        with `with_hidden`). `beside`: GPU work independent of the prefill (slot resets, the
        drafter's start: ~0.5-2 ms on an H200) on a second stream beside the prefill's graphs,
        after what the current stream held, before what it runs next (without graphs: after)."""
        n, width = input_ids.shape
        cache = self.cache
        captures = len(self._graphs)
        main = torch.cuda.current_stream(cache.k.device) if self.use_graphs else None
        ready = main.record_event() if main is not None and beside is not None else None
        hidden = None
        if self.with_hidden:
            r = self.runner
            hidden = torch.zeros(n, width, r.hidden_size, dtype=r.dtype, device=r.device)
        host_lengths = [len(p) for p in prompts]
        if width > 0 and self.pack:
            for call in plan_packs(host_lengths, self.capacity):
                self._land_packed(self._packed_call(call, rows, prompts), hidden)
        elif width > 0 and self.use_graphs:
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
                if scratch is not cache:
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
            side = self._side_stream()
            side.wait_event(ready)
            with torch.cuda.stream(side):
                beside()
            main.wait_stream(side)
        return len(self._graphs) == captures, hidden

    @property
    def defers(self) -> bool:
        """Whether `launch` can compute an admission apart from landing it: packed graph calls
        (the scratch row is the launch's own until it lands) and eager calls (a scratch cache of
        their own); not padded graph calls (several calls share the scratch rows)."""
        return self.pack or not self.use_graphs

    def fits(self, prompts: list[list[int]]) -> int:
        """How many of `prompts` (from the first) one `launch` takes: packed, `capacity` tokens;
        eager, MAX_TOKENS padded; at least one."""
        count, used, longest, limit = 0, 0, 0, self.capacity if self.pack else MAX_TOKENS
        for p in prompts:  # packed: tokens; eager: padded tokens
            used, longest = used + len(p), max(longest, len(p))
            if count and (used if self.pack else (count + 1) * longest) > limit:
                break
            count += 1
        return count

    def launch(
        self,
        rows: list[int],
        prompts: list[list[int]],
        beside: Callable[[], None] | None = None,
    ) -> Landing:
        """The first half of an admission (`defers`; prompt[:-1] per slot in `rows`): the prefill
        of the first `fits(prompts)` prompts into the scratch; with graphs on a second stream,
        after what the current stream held (the last landing read the scratch) and beside what it
        runs next (the decode steps of the live slots), followed there by `beside` (GPU work that
        the landing must wait for, e.g. Drafter.prepare; not run without the second stream:
        Landing.beside_ran). The cache is not touched until `land`."""
        if not self.defers:
            raise RuntimeError("Prefiller.launch: padded graph calls do not defer (defers)")
        count = self.fits(prompts)
        rows, prompts = rows[:count], prompts[:count]
        width = max(map(len, prompts))
        dev, r = self.cache.k.device, self.runner
        # (device tensors made at landing: a pageable upload here would wait for the stream)
        host_lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int32)
        hidden_shape = (count, width, r.hidden_size) if self.with_hidden else None
        eager_hidden = None
        move_in: Callable[[torch.Tensor, torch.Tensor | None], None] | None = None
        events: list[torch.cuda.Event] | None = None  # the launch's start and end on its stream
        if width > 0 and not self.pack:  # eager, on the current stream
            ids = torch.zeros(count, width, dtype=torch.int32)
            for i, p in enumerate(prompts):
                ids[i, : len(p)] = torch.tensor(p, dtype=torch.int32)
            scratch = r.allocate_cache(count, width)
            extra = {}
            if hidden_shape is not None:
                eager_hidden = torch.zeros(hidden_shape, dtype=r.dtype, device=dev)
                extra["hidden_out"] = eager_hidden
            r.prefill(ids.to(dev), host_lengths.to(dev), scratch, **extra)

            def move_in(index, hidden) -> None:
                self._copy_in(index, scratch, count, width)

        elif width > 0:
            side = self._side_stream() if self.use_graphs else None
            if side is not None:  # (timed: the scheduler lands the next ones when due)
                side.wait_stream(torch.cuda.current_stream(dev))
                events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
                side.record_event(events[0])
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                packed = self._packed_call(list(range(count)), rows, prompts)
                if side is not None and beside is not None:
                    beside()
            if side is not None:
                side.record_event(events[1])

            def move_in(index, hidden) -> None:
                if events is not None:
                    torch.cuda.current_stream(dev).wait_event(events[1])
                self._land_packed(packed, hidden)

        def land() -> torch.Tensor | None:
            index = upload_rows(rows, dev)
            hidden = eager_hidden
            if hidden is None and hidden_shape is not None:
                hidden = torch.zeros(hidden_shape, dtype=r.dtype, device=dev)
            if move_in is not None:
                move_in(index, hidden)
            self.cache.cache_len.index_copy_(0, index, upload(host_lengths, dev))
            return hidden

        return Landing(count, land, events, beside_ran=events is not None and beside is not None)

    def _side_stream(self) -> torch.cuda.Stream:
        if self._side is None:
            self._side = torch.cuda.Stream(device=self.cache.k.device)
        return self._side

    def _packed_call(self, call, rows, prompts) -> _Packed:
        """The prompts `call` (indices into prompts / rows) in one packed prefill into the
        scratch row; `_land_packed` then moves them into their slots.
        Everything the call reads is built on the host and sent in one pinned, non-blocking copy
        (a pageable copy waits for the stream), int32, for `width` columns (the bucket; eager:
        total): the packed tokens (tail: zeros), their segment starts (tail: one token per
        segment), the token count (and 3 pad entries), then per token its slot, its column in
        its prompt and its index in `hidden` viewed flat (each part padded to 4 entries). With
        graphs the copy lands in the static buffer the graph of `width` reads: the host work
        before the replay is this one copy (a one-prompt admission's critical path on the
        H200's host, where every torch call costs ~20-70 us)."""
        runner = self.runner
        sizes = np.array([len(prompts[i]) for i in call])
        total = int(sizes.sum())
        width = pack_bucket(total, self.capacity) if self.use_graphs else total
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        col = np.arange(total) - starts
        gap = np.zeros(aligned_len(total) - total, np.int32)  # parts at 16 bytes (_land_packed)
        parts = [
            np.fromiter(itertools.chain.from_iterable(prompts[i] for i in call), np.int32, total),
            np.zeros(width - total, np.int32),
            starts,
            np.arange(total, width),
            [total] + [0] * (aligned_len(1) - 1),
            np.repeat([rows[i] for i in call], sizes),
            gap,
            col,
            gap,
        ]
        if self.with_hidden:  # (hidden [n, W, H] is sized by the admission's longest prompt)
            parts.append(np.repeat(np.array(call) * max(map(len, prompts)), sizes) + col)
        host = torch.from_numpy(np.concatenate(parts).astype(np.int32, copy=False))
        if self.use_graphs:
            self._allocate_scratch()
            meta = copy_to_device(host, self._stage[: host.shape[0]])
            graph = self._graphs.get((1, width))
            if graph is None:
                graph = self._capture(1, width)
            graph.replay()
            return _Packed(meta, width, total, self._scratch, self._hidden)
        meta = upload(host, runner.device)
        ids, segment_start, lengths = self._graph_inputs(meta, width)
        scratch = runner.allocate_cache(1, total)
        extra = {}
        if self.with_hidden:
            shape = (1, total, runner.hidden_size)
            extra["hidden_out"] = torch.empty(shape, dtype=runner.dtype, device=runner.device)
        runner.prefill(ids, lengths, scratch, segment_start=segment_start, **extra)
        return _Packed(meta, width, total, scratch, extra.get("hidden_out"))

    def _land_packed(self, p: _Packed, hidden: torch.Tensor | None) -> None:
        """A packed call's K/V (and hidden states) from its scratch into the slots."""
        # Parts at 16 bytes (buffers.aligned_len; the widths with graphs are multiples of 4).
        lo, step = 2 * p.width + aligned_len(1), aligned_len(p.total)
        slot, col = p.meta[lo : lo + p.total], p.meta[lo + step : lo + step + p.total]
        kv_scatter(p.scratch.k, p.scratch.v, self.cache.k, self.cache.v, slot, col, p.total)
        if hidden is not None:
            flat = p.meta[lo + 2 * step : lo + 2 * step + p.total].long()
            hidden.view(-1, hidden.shape[-1]).index_copy_(0, flat, p.hidden[0, : p.total])

    @staticmethod
    def _graph_inputs(meta: torch.Tensor, width: int):
        """The runner's inputs in a packed call's buffer (see _packed_call): input_ids [1, width],
        segment_start [1, width], lengths [1]."""
        return meta[:width][None], meta[width : 2 * width][None], meta[2 * width : 2 * width + 1]

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
        self._allocate_scratch()  # (padded)
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
        if self.pack:
            for width_b in pack_buckets(self.capacity):
                if (1, width_b) not in self._graphs:
                    self._capture(1, width_b)
            return
        for rows_b in powers_up_to(1, self._graph_rows):
            for width_b in powers_up_to(min(MIN_WIDTH, self.cache.max_len), self.cache.max_len):
                if (rows_b, width_b) not in self._graphs and rows_b * width_b <= MAX_CALL_TOKENS:
                    self._capture(rows_b, width_b)

    def _allocate_scratch(self) -> None:
        if self._scratch is not None:
            return
        r, dev = self.runner, self.runner.device
        rows, width = (1, self.capacity) if self.pack else (self._graph_rows, self.cache.max_len)
        # A one-slot cache is its own scratch: its admissions' graphs write into the slot (no
        # copy of the prompt's K/V, no second cache). An admission only ever fills a free slot,
        # and a capture's warm-up writes the only slot just before its prompt does.
        one_slot = not self.pack and self.cache.k.shape[1] == 1
        self._scratch = self.cache if one_slot else r.allocate_cache(rows, width)
        if self.pack:  # the packed calls' buffer (_packed_call), at most 5 x capacity + 13
            self._stage = torch.zeros(5 * width + 16, dtype=torch.int32, device=dev)
        else:
            self._input_ids = torch.zeros(rows, width, dtype=torch.int32, device=dev)
            self._lengths = torch.zeros(rows, dtype=torch.int32, device=dev)
        if self.with_hidden:
            self._hidden = torch.zeros(rows, width, r.hidden_size, dtype=r.dtype, device=dev)

    def _capture(self, rows_b: int, width_b: int) -> torch.cuda.CUDAGraph:
        extra = {} if self._hidden is None else {"hidden_out": self._hidden[:rows_b, :width_b]}
        if self.pack:
            ids, extra["segment_start"], lens = self._graph_inputs(self._stage, width_b)
        else:
            ids, lens = self._input_ids[:rows_b, :width_b], self._lengths[:rows_b]
        side = torch.cuda.Stream(device=self.runner.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: Triton compilation, allocator
            self.runner.prefill(ids, lens, self._scratch, **extra)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # a capture stream of its own: cuBLAS keys its workspace by stream, and these graphs
        # replay beside the step graphs; on a shared workspace their GEMMs would race
        # (samgpu/decoding/streams.py: why not torch.cuda.Stream())
        stream = private_stream(self.runner.device, "prefill graphs")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=stream):
            self.runner.prefill(ids, lens, self._scratch, **extra)
        self._graphs[(rows_b, width_b)] = graph
        return graph
