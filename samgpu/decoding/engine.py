"""The engine: preallocated buffers, one decode step on the GPU, and the CUDA graphs that replay it.

One step, for the B leading slots of the buffers (B = the width the scheduler set):
  1. draft   `drafter.propose(state, tree)`              tree tokens/parents/num_nodes [B, N]
  2. tree    `tree_mask(parents, num_nodes, cache_len)`  ancestor mask [B, N, N], positions [B, N]
  3. forward `runner.forward_tree(...)`                  logits [B, N, V], K/V at cache_len+i
  4. verify  greedy walk on each node's argmax or (temperature > 0) on the token it samples
  5. commit  `kv_compact` (accepted K/V -> contiguous) then `commit` (text, lengths, EOS, finished)
  6. update  `drafter.update(state, step)`
Each stage is one or a few kernels over the whole batch, with no host synchronisation (nothing in
the step reads a GPU value on the host; tests/test_no_sync.py scans `_step` and, on CUDA, runs
steps under torch.cuda.set_sync_debug_mode("error")). Finished sequences stay in the batch, masked
by `commit` (they emit nothing; their attention reads no prefix). Each stage runs inside
`stage_range(name)`: NVTX (Nsight), the CLI's --profile torch.profiler, `profile_stages` events.

CUDA graphs: with a CUDA device, a graph-safe drafter and runner and `use_cuda_graphs`, the first
step of each (B, mode) bucket runs eagerly on a side stream (Triton compilation, allocator
warm-up; it is a real step), the second is captured as ONE graph of the whole step and every later
step replays it. The mode holds the sampling parameters (temperature, top_k, top_p), which are
baked into the graph; EOS ids live in a fixed-size device buffer, so they are not.

Randomness (sampling): each node's token is raced on noise keyed by (seed, the slot's request key,
the node's position) (kernels/randoms.py): no random state advances, so a request's tokens depend
on its prompt, seed and key alone, not on the step shapes, its batch or the decoder's history.

Between steps (the scheduler's host checks): `prefill(rows, prompts)` loads prompts into slots
(rows of every buffer reset, prompt[:-1] into the KV cache by samgpu.decoding.prefill, the last
token as the first root, `drafter.start`), or in two halves beside live slots (`begin_prefill`,
`end_prefill`); `read_flags()` is the loop's one host read (finished flags and lengths, pinned);
`collect(rows)` reads finished requests' tokens and statistics in one copy, `drafter.finish`
(`begin_collect`: the copy queued now, read later, for steps queued in between).

Example: engine.configure(config, 2); engine.prefill([0, 1], [[1, 2, 3], [4, 5]]); engine.step()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace

import torch

from samgpu.decoding.buffers import (
    StepBuffers,
    StepViews,
    copy_to_host,
    upload_admission,
    upload_rows,
)
from samgpu.decoding.config import MAX_EOS, GenerationConfig, RequestStats
from samgpu.decoding.prefill import Landing, Prefiller
from samgpu.decoding.stages import StageRange, StageTimer, nvtx_range
from samgpu.decoding.streams import private_stream
from samgpu.drafters.protocol import Drafter, NewRequests, finishes, prepares
from samgpu.kernels.commit import commit
from samgpu.kernels.kv_compact import kv_compact
from samgpu.kernels.tree import tree_mask
from samgpu.kernels.verify import sampling_probs, verify_greedy, verify_sample
from samgpu.types import PAD_TOKEN, SOURCE_NAMES, DecodeState, StepOutput


class Engine:
    """Buffers, the decode step and its CUDA graphs for `drafter` on `runner` (module doc).
    max_reqs: slots (capacity of every per-sequence buffer); max_len: per-slot capacity of the KV
    cache and the text buffer, >= prompt + max_new_tokens + drafter.max_nodes."""

    def __init__(
        self,
        runner,
        drafter: Drafter,
        *,
        max_reqs: int,
        max_len: int,
        use_cuda_graphs: bool = True,
        stage_range: StageRange = nvtx_range,
    ):
        if max_reqs < 1:
            raise ValueError(f"max_reqs={max_reqs} must be >= 1")
        num_nodes, max_depth = int(drafter.max_nodes), int(drafter.max_depth)
        if num_nodes < 1 or not 0 <= max_depth < num_nodes:
            raise ValueError(
                f"drafter {drafter.name!r}: need max_nodes >= 1 and 0 <= max_depth < max_nodes, "
                f"got max_nodes={num_nodes}, max_depth={max_depth}"
            )
        if max_len < num_nodes + 2:
            raise ValueError(
                f"max_len={max_len} must be >= drafter.max_nodes + 2 = {num_nodes + 2}"
            )
        self.runner, self.drafter = runner, drafter
        self.max_reqs, self.max_len = max_reqs, max_len
        self.device = torch.device(runner.device)
        self.num_nodes = num_nodes
        self.k_slots = max_depth + 1
        self.vocab_size = int(runner.vocab_size)
        self.stage_range = stage_range
        safe = drafter.graph_safe and bool(getattr(runner, "graph_safe", True))
        self.use_cuda_graphs = use_cuda_graphs and self.device.type == "cuda" and safe
        self.cache = runner.allocate_cache(max_reqs, max_len)
        graphs, hidden = self.use_cuda_graphs, drafter.needs_hidden
        self._prefiller = Prefiller(runner, self.cache, use_graphs=graphs, with_hidden=hidden)
        dev, R, N, V, K = self.device, max_reqs, num_nodes, self.vocab_size, self.k_slots

        def i32(*shape, fill=0):  # a preallocated int32 buffer
            return torch.full(shape, fill, dtype=torch.int32, device=dev)

        self._state = DecodeState(
            root=i32(R),
            cache_len=self.cache.cache_len,
            text=i32(R, max_len, fill=PAD_TOKEN),
            text_len=i32(R),
            prompt_len=i32(R),
            num_generated=i32(R),
            max_new_tokens=i32(R),
            finished=torch.ones(R, dtype=torch.bool, device=dev),
        )
        hidden_size = runner.hidden_size if drafter.needs_hidden else None
        self._full = StepBuffers(R, N, K, V, dev, hidden_size, runner.dtype, runner.logits_dtype)
        # one-node steps for adaptive speculation (drafting methods only)
        self._plain = (
            StepBuffers(R, 1, 1, V, dev, hidden_size, runner.dtype, runner.logits_dtype)
            if N > 1
            else None
        )
        self._speculate = True
        self._eos = i32(MAX_EOS, fill=PAD_TOKEN)
        self._seed = torch.zeros(1, dtype=torch.int64, device=dev)  # sampling: the call's seed
        self._sample_keys = torch.zeros(R, dtype=torch.int64, device=dev)  # and the slots' keys
        self._num_steps = i32(R)
        self._accepted_hist = i32(R, K)
        self._source_counts = i32(R, len(SOURCE_NAMES))
        self._flags_host = torch.zeros(2 * R, dtype=torch.int32, pin_memory=dev.type == "cuda")
        # finished rows' reads (counters, then text; one call's in use at a time)
        size = R * (3 + K + len(SOURCE_NAMES) + max_len)
        self._rows_host = torch.empty(size, dtype=torch.int32, pin_memory=dev.type == "cuda")
        self._views_by_key: dict[tuple[int, bool], StepViews] = {}
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._warm: set[tuple] = set()
        self._graph_pool = None
        self._config = GenerationConfig()
        self._views = self._make_views(1, True)
        self._landing = None  # begin_prefill's (rows, load, Landing) until end_prefill

    # ------------------------------------------------------------------ set-up per call

    @property
    def width(self) -> int:
        """B: the leading slots the step runs over."""
        return self._views.state.num_reqs

    @property
    def state(self) -> DecodeState:
        return self._views.state

    @property
    def graph_keys(self) -> list[tuple]:
        """The (width, speculate, sampling mode) buckets captured as CUDA graphs so far."""
        return list(self._graphs)

    def validate(self, prompts: list[list[int]], config: GenerationConfig) -> None:
        """Host checks of a call's prompts (the one place they are made; config.check_prompts)."""
        limits = dict(vocab_size=self.vocab_size, max_len=self.max_len, num_nodes=self.num_nodes)
        config.check_prompts(prompts, **limits)

    def configure(self, config: GenerationConfig, width: int) -> None:
        """Per-call device settings (EOS ids, sampling seed and buffers) and the batch width B."""
        if not 1 <= width <= self.max_reqs:
            raise ValueError(f"width={width} must be in [1, max_reqs={self.max_reqs}]")
        if config.is_sampling and self._full.probs is None:
            for buffers in (self._full, self._plain):
                if buffers is not None:
                    buffers.allocate_sampling()
            self._views_by_key.clear()  # views must include the new buffers (the captured
            # graphs stay valid: they hold the same memory; dropping them would free their
            # private pool, which the next capture would then name: an allocator assert)
        eos = list(config.eos_token_ids) + [PAD_TOKEN] * (MAX_EOS - len(config.eos_token_ids))
        self._eos.copy_(torch.tensor(eos, dtype=torch.int32))
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)))
        self._seed.fill_(seed)
        self._config = config
        self.set_width(width)
        if self._landing is not None:  # a call that stopped with an admission pending: its
            self._landing[2].land()  # prefill's K/V go to its (finished) slots, so that the
            self._landing = None  # scratch is reused after that prefill

    def set_width(self, width: int) -> None:
        """Run the next steps over the `width` leading slots (each loaded or finished)."""
        self._views = self._make_views(width, self._speculate)

    @property
    def can_skip_drafts(self) -> bool:
        """True when the drafter drafts at all: steps can then also run as plain AR steps."""
        return self._plain is not None

    @property
    def speculate(self) -> bool:
        return self._speculate

    def set_speculate(self, speculate: bool) -> None:
        """Drafting steps (the drafter's tree) or plain AR steps (the root alone, a graph of its
        own); the drafter's update runs either way, so drafting can resume at any step."""
        speculate = speculate or self._plain is None
        if speculate != self._speculate:
            self._speculate = speculate
            self._views = self._make_views(self.width, speculate)

    def _make_views(self, B: int, speculate: bool) -> StepViews:
        views = self._views_by_key.get((B, speculate))
        if views is not None:
            return views
        buffers = self._full if speculate else self._plain
        st, so = self._state, buffers.step
        state = st.rows(B)
        tree = buffers.tree.rows(B)
        step = StepOutput(
            tree=tree,
            logits=so.logits[:B],
            verify=so.verify.rows(B),
            start_len=so.start_len[:B],
            new_tokens=so.new_tokens[:B],
            num_new=so.num_new[:B],
            hidden=None if so.hidden is None else so.hidden[:B],
        )
        state.step = step
        empty = torch.zeros(0, device=self.device)
        views = StepViews(
            state=state,
            tree=tree,
            mask=buffers.mask.rows(B),
            step=step,
            k=self.cache.k[:, :B],
            v=self.cache.v[:, :B],
            speculate=speculate,
            probs=buffers.probs[:B] if buffers.probs is not None else empty,
            sample_keys=self._sample_keys[:B],
            num_steps=self._num_steps[:B],
            accepted_hist=self._accepted_hist[:B],
            source_counts=self._source_counts[:B],
        )
        self._views_by_key[(B, speculate)] = views
        return views

    # ------------------------------------------------------------------ prompts in

    def prefill(self, rows: list[int], prompts: list[list[int]], keys: list[int] | None = None):
        """Load `prompts` into slots `rows` (distinct, < width): reset their rows of every buffer,
        prefill prompt[:-1] into the KV cache, set the root to the last prompt token and the
        sampling key (`keys`; None: the rows), then `drafter.start`. Other slots are not
        touched. False when it also captured, like `step`."""
        if self._landing is not None:  # (its prefill may still be filling the scratch)
            raise RuntimeError("prefill: an admission is pending (end_prefill first)")
        self._check_rows(rows, prompts)
        index, text, lens, load, _ = self._loader(rows, prompts, keys)
        # the runner embeds the padding too (right padding, never attended to): any valid id
        input_ids = text[:, : max(map(len, prompts)) - 1].clamp(min=0).contiguous()
        args = (rows, index, input_ids, lens - 1, [p[:-1] for p in prompts])
        if self.drafter.needs_hidden:  # its start reads the prompts' hidden states
            clean, hidden = self._prefiller(*args)
            load(hidden)
        else:  # independent of the prefill: beside it (Prefiller: a second stream with graphs)
            clean, _ = self._prefiller(*args, beside=load)
        return clean

    @property
    def defers_prefill(self) -> bool:  # admissions can come in two halves (begin / end_prefill)
        return self._prefiller.defers

    def begin_prefill(self, rows: list[int], prompts: list[list[int]], keys=None) -> Landing:
        """The first half of an admission beside live slots: the prefill of the first prompts
        that fit one call (Landing.count), then drafter.prepare, with graphs on a second stream
        beside the steps that follow (these slots stay finished); `end_prefill` loads them. One
        at a time."""
        self._check_rows(rows, prompts)
        if self._landing is not None:
            raise RuntimeError("begin_prefill: an admission is pending (end_prefill first)")
        count = self._prefiller.fits([p[:-1] for p in prompts])
        rows, prompts = rows[:count], prompts[:count]
        _, _, _, load, prepare = self._loader(rows, prompts, None if keys is None else keys[:count])
        beside = prepare if prepares(self.drafter) else None  # (ar, pld: nothing to prepare)
        landing = self._prefiller.launch(rows, [p[:-1] for p in prompts], beside=beside)
        self._landing = (rows, load, landing)
        return landing

    def end_prefill(self) -> list[int]:
        """The second half: the pending prompts' K/V into their slots, then as in `prefill` (rows
        reset, roots, drafter.start), on the current stream. Returns their rows ([]: none)."""
        if self._landing is None:
            return []
        rows, load, landing = self._landing
        self._landing = None
        load(landing.land(), prepared=landing.beside_ran)
        return rows

    def _check_rows(self, rows: list[int], prompts: list[list[int]]) -> None:
        if len(rows) != len(prompts) or not prompts:
            raise ValueError(f"prefill: {len(rows)} rows for {len(prompts)} prompts")
        if len(set(rows)) != len(rows) or min(rows) < 0 or max(rows) >= self.width:
            raise ValueError(f"prefill: rows {rows} must be distinct slots below {self.width}")

    def _loader(self, rows: list[int], prompts: list[list[int]], keys: list[int] | None):
        """(index, text [n, longest], lens [n] on the device, load(hidden, prepared), prepare())
        for checked rows: load resets the rows of every buffer (StepViews.load_rows) and calls
        drafter.start; prepare calls drafter.prepare on the prompts in a scratch (an overlapped
        admission's, beside the steps: state.text keeps the last requests' text until landing,
        as other slots' drafting may read it, e.g. pld's, and must draft valid tokens)."""
        v, dev, longest = self._views, self.device, max(map(len, prompts))
        keys64, index, lens, text = upload_admission(rows, prompts, keys, dev)

        def new(**kw) -> NewRequests:  # (lengths on the prompts' rows, 0 elsewhere)
            started = torch.zeros(self.width, dtype=torch.int32, device=dev)
            return NewRequests(index, started.index_copy_(0, index, lens), longest, **kw)

        def prepare() -> None:
            scratch = torch.full((self.width, longest), PAD_TOKEN, dtype=torch.int32, device=dev)
            self.drafter.prepare(v.state, new(text=scratch.index_copy_(0, index, text)))

        def load(hidden: torch.Tensor | None = None, prepared: bool = False) -> None:
            now = self._views  # (at landing: the mode may have changed since the launch)
            now.load_rows(index, text, lens, self._config.max_new_tokens, keys64)
            self.drafter.start(now.state, new(hidden=hidden, prepared=prepared))

        return index, text, lens, load, prepare

    # ------------------------------------------------------------------ the step

    def _step(self) -> None:
        """One whole decode step on the GPU: no host reads, fixed shapes (graph-capturable)."""
        v, config, stage = self._views, self._config, self.stage_range
        state, tree, step = v.state, v.tree, v.step
        ver = step.verify
        with stage("draft"):
            if v.speculate:
                self.drafter.propose(state, tree)
            else:  # a plain AR step: the root alone
                tree.tokens[:, 0].copy_(state.root)
                tree.num_nodes.fill_(1)
        with stage("tree"):
            tree_mask(tree.parents, tree.num_nodes, state.cache_len, out=v.mask)
        with stage("forward"):
            step.start_len.copy_(state.cache_len)
            extra = {"live": ~state.finished}
            if step.hidden is not None:
                extra["hidden_out"] = step.hidden
            self.runner.forward_tree(
                tree.tokens, v.mask.positions, v.mask.mask, self.cache, step.logits, **extra
            )
        with stage("verify"):
            if config.is_sampling:
                sampling_probs(
                    step.logits,
                    temperature=config.temperature,
                    top_k=config.top_k,
                    top_p=config.top_p,
                    out=v.probs,
                )
                verify_sample(
                    v.probs,
                    tree.tokens,
                    tree.parents,
                    tree.num_nodes,
                    self._seed,
                    v.sample_keys,
                    v.mask.positions,
                    out=ver,
                )
            else:
                verify_greedy(step.logits, tree.tokens, tree.parents, tree.num_nodes, out=ver)
        with stage("commit"):
            kv_compact(v.k, v.v, state.cache_len, ver.accepted_nodes, ver.num_accepted)
            v.accumulate_stats(self.drafter.last_source)
            commit(state, step, self._eos)
        with stage("update"):
            self.drafter.update(state, step)

    def step(self) -> bool:
        """One step over the current width and mode: a graph replay once the bucket is captured.
        Returns False when the step also compiled or captured (its time is not a step's time)."""
        if not self.use_cuda_graphs:
            self._step()
            return True
        c = self._config
        key = (self.width, self._speculate, *c.graph_mode)
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
            return True
        if key not in self._warm:
            # Warm-up (a real step): Triton compilation and allocations happen outside capture.
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._warm.add(key)
            return False
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        stream = private_stream(self.device, "step graphs")  # (streams.py: cuBLAS workspaces)
        with torch.cuda.graph(graph, pool=self._graph_pool, stream=stream):
            self._step()
        self._graphs[key] = graph
        graph.replay()
        return False

    def is_warm(self, width: int, sampling: GenerationConfig | None = None) -> bool:
        """Whether `warm_up(width, sampling)` ran: its drafting step is captured (True without
        CUDA graphs: eager steps compile as they go, a second warm-up would add nothing)."""
        mode = (sampling or GenerationConfig(max_new_tokens=1)).graph_mode
        return not self.use_cuda_graphs or (width, True, *mode) in self._graphs

    def warm_up(self, width: int, sampling: GenerationConfig | None = None) -> None:
        """Compile the kernels and capture the step graphs of `width` slots (drafting and, when
        the drafter drafts, plain steps) in `sampling`'s mode (default greedy) on a dummy
        prompt, and the prefill graphs: the first real steps and admissions are replays. Slots
        are left finished (prefill resets rows)."""
        mode = dict(max_new_tokens=8, eos_token_ids=(), seed=0, sample_keys=None)
        config = GenerationConfig(**mode) if sampling is None else replace(sampling, **mode)
        self.configure(config, width)
        self.prefill(list(range(width)), [[0] * 4] * width)
        saved = self._speculate
        for speculate in (True, False) if self.can_skip_drafts else (True,):
            self.set_speculate(speculate)
            for _ in range(3):  # eager warm-up, capture, one replay
                self.step()
        self.set_speculate(saved)
        self._prefiller.warm_up()
        self._state.finished.fill_(True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ host reads

    def read_flags(self) -> tuple[list[bool], list[int]]:
        """The one host read of the loop: finished flags and tokens generated, per slot."""
        B, st = self.width, self._views.state
        packed = torch.cat([st.finished.to(torch.int32), st.num_generated])
        flags = copy_to_host(packed, self._flags_host)().tolist()
        return [bool(f) for f in flags[:B]], flags[B:]

    def read_tokens(self, rows: list[int]) -> list[list[int]]:
        """Tokens generated so far by the requests in slots `rows` (progress, streaming)."""
        idx = upload_rows(rows, self.device)
        return [t for t, _ in self._views.read_rows(idx, False, self._rows_host)()] if rows else []

    def collect(self, rows: list[int]) -> list[tuple[list[int], RequestStats]]:
        """Tokens and statistics of the finished requests in slots `rows` (one host read of those
        rows), and `drafter.finish` for them. Timing fields are left to the scheduler."""
        return self.begin_collect(rows)()

    def end_rows(self, rows: list[int]) -> None:
        """Mark slots `rows` finished (requests the host ended: a stop string): later steps leave
        them alone."""
        self._views.state.finished.index_fill_(0, upload_rows(rows, self.device), True)

    def begin_collect(
        self, rows: list[int], at_check: bool = False
    ) -> Callable[[], list[tuple[list[int], RequestStats]]]:
        """`collect` in two halves: the rows' read and `drafter.finish` are queued now; the
        returned call waits for the read. `at_check`: the rows are as the last read_flags saw
        them (finished there, or by end_rows since): on CUDA the read goes on a side stream,
        where steps queued since (they leave finished rows alone) do not delay it."""
        if not rows:
            return list
        v, has_sources = self._views, self.drafter.last_source is not None
        side = at_check and self.device.type == "cuda"
        # (side: the host synced at read_flags, the stream waits for nothing; a private one, as a
        # pooled stream may be the one an admission's prefill replays on, and wait for it)
        reads = private_stream(self.device, "collect reads") if side else None
        with torch.cuda.stream(reads) if side else contextlib.nullcontext():
            idx = upload_rows(rows, self.device)
            if not at_check:
                v.state.finished.index_fill_(0, idx, True)
            read = v.read_finished(idx, self._rows_host, has_sources)
        if finishes(self.drafter):  # (on the steps' stream: finish may write what steps read)
            self.drafter.finish(v.state, upload_rows(rows, self.device) if side else idx)
        return read

    def profile_stages(
        self, prompts: list[list[int]], config: GenerationConfig, max_steps: int = 32
    ) -> dict[str, float] | None:
        """Mean GPU milliseconds per step of each stage over up to `max_steps` eager steps of the
        first `max_reqs` prompts, from CUDA events (which separate the stages, so the sum exceeds
        a graph replay's step time). None on CPU."""
        if self.device.type != "cuda" or not prompts:
            return None
        prompts = [list(map(int, p)) for p in prompts[: self.max_reqs]]
        self.validate(prompts, config)
        self.configure(config, len(prompts))
        self.prefill(list(range(len(prompts))), prompts)
        self._step()  # warm-up (compilation) outside the timing
        timer, saved = StageTimer(), self.stage_range
        self.stage_range = timer
        try:
            steps = min(max_steps, config.max_new_tokens - 1)
            for _ in range(steps):
                self._step()
            return timer.mean_ms(steps)
        finally:
            self.stage_range = saved
