"""The GPU-resident decode loop: draft -> tree -> forward -> verify -> compact/commit -> update.

One step, for a batch of B sequences (buffers preallocated at capacity, B leading rows used):
  1. draft   `drafter.propose(state, tree)`             tree tokens/parents/num_nodes [B, N]
  2. tree    `tree_mask(parents, num_nodes, cache_len)` ancestor mask [B, N, N], positions [B, N]
  3. forward `runner.forward_tree(...)`                 logits [B, N, V] fp32 (K/V at cache_len + i)
  4. verify  greedy walk, or recursive rejection sampling (temperature > 0)
  5. commit  `kv_compact` (accepted K/V -> contiguous) then `commit` (text, lengths, EOS, finished)
  6. update  `drafter.update(state, step)`
Every stage is one or a few kernels over the whole batch, with no host synchronisation: nothing in
the step reads a GPU value on the host (tests/test_no_sync.py scans this file's step code and, on
CUDA, runs a step under torch.cuda.set_sync_debug_mode("error")). Finished sequences stay in the
batch, masked by `commit` (they emit nothing). Each stage is an NVTX range named as above.

The host looks at the GPU only every `config.check_every` steps: it copies the finished flags and
lengths into pinned memory (non_blocking, then an event) and stops when all sequences finished or
after max_new_tokens steps (every live sequence emits at least one token per step).

CUDA graphs: with a CUDA device, a graph-safe drafter and runner and `use_cuda_graphs`, the first
step of each (B, mode) bucket runs eagerly on a side stream (Triton compilation, allocator warm-up;
it is a real step), the second is captured as ONE graph of the whole step and every later step
replays it. The mode holds the sampling parameters (temperature, top_k, top_p), which are baked
into the graph; EOS ids live in a fixed-size device buffer, so they are not.

Randomness (sampling): uniforms [B, N] and exponentials [B, V] are drawn each step into
preallocated buffers by `draw_randoms` from a device-side (seed, step) pair (Philox in Triton on
CUDA, so replays draw fresh numbers without generator registration; a seeded torch.Generator on
CPU). Same seed, same prompts, same batch composition -> same tokens.

Prefill: prompts of different lengths in one ragged batch; the runner gets prompt[:-1] (right
padded) and the last prompt token is the first root (docs/ARCHITECTURE.md). Prompts beyond
max_reqs run in successive batches, or, with `config.continuous`, in one batch whose finished
slots take the next prompts at each host check (`_refill`: the new prompts are prefilled into a
scratch cache whose rows are copied into the freed slots; `drafter.prefill_rows` sets up their
drafting state; the other slots carry on, and the captured graph is reused since buffers and B do
not change). Statistics (steps, accepted-length histogram, draft sources) accumulate on the GPU and
are read once per batch, or per request as it finishes.

Example: Decoder(runner, build_drafter("ar", ...), max_reqs=8, max_len=2048).generate(
    [[1, 2, 3]], GenerationConfig(max_new_tokens=32)) -> GenerationOutput(tokens=[[...32 ids]], ...)
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from samgpu.decoding.config import (  # noqa: F401 (re-exported: the loop's public types)
    MAX_EOS,
    GenerationConfig,
    GenerationOutput,
    ProgressInfo,
    RequestStats,
)
from samgpu.decoding.continuous import ContinuousBatching
from samgpu.kernels.commit import commit
from samgpu.kernels.kv_compact import kv_compact
from samgpu.kernels.tree import TreeMask, tree_mask
from samgpu.kernels.verify import (
    VerifyOutput,
    draw_randoms,
    sampling_probs,
    verify_greedy,
    verify_sample,
)
from samgpu.types import (
    PAD_TOKEN,
    SOURCE_DYNAMIC,
    SOURCE_FALLBACK,
    SOURCE_NONE,
    SOURCE_STATIC,
    DecodeState,
    DraftTree,
    StepOutput,
)

SOURCE_NAMES: dict[int, str] = {
    SOURCE_NONE: "none",
    SOURCE_STATIC: "static",
    SOURCE_DYNAMIC: "dynamic",
    SOURCE_FALLBACK: "fallback",
}
NVTX_STAGES: tuple[str, ...] = ("draft", "tree", "forward", "verify", "commit", "update")


@dataclass
class _Batch:
    """Views of the capacity buffers for a batch of B sequences (stable across calls with the
    same B, so captured graphs keep pointing at them)."""

    state: DecodeState
    tree: DraftTree
    mask: TreeMask
    logits: torch.Tensor  # [B, N, V] float32
    verify: VerifyOutput
    step: StepOutput
    k: torch.Tensor  # [L, B, H, max_len, D] view of the cache
    v: torch.Tensor
    probs: torch.Tensor  # [B, N, V] float32 (sampling)
    uniforms: torch.Tensor  # [B, N] float32
    exponentials: torch.Tensor  # [B, V] float32
    num_steps: torch.Tensor  # [B] int32; live steps
    accepted_hist: torch.Tensor  # [B, K] int32
    source_counts: torch.Tensor  # [B, 4] int32


def _nvtx(name: str):
    if torch.cuda.is_available():
        return torch.cuda.nvtx.range(name)
    return contextlib.nullcontext()


class _StageTimer:
    """CUDA events around each stage of eager steps (profile_stages only; never in graphs)."""

    def __init__(self):
        self.events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self.events.append((name, start, end))

    def mean_ms(self, steps: int) -> dict[str, float]:
        torch.cuda.synchronize()
        total: dict[str, float] = {name: 0.0 for name in NVTX_STAGES}
        for name, start, end in self.events:
            total[name] += start.elapsed_time(end)
        return {name: ms / max(steps, 1) for name, ms in total.items()}


class Decoder(ContinuousBatching):
    """Batched speculative decoding with `drafter` on `runner`; see the module docstring.

    max_reqs: sequences per batch (capacity of every buffer); max_len: per-sequence capacity of
    the KV cache and text buffer, >= prompt + max_new_tokens + drafter.max_nodes."""

    def __init__(
        self,
        runner,
        drafter,
        *,
        max_reqs: int,
        max_len: int,
        use_cuda_graphs: bool = True,
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
        self.runner = runner
        self.drafter = drafter
        self.max_reqs = max_reqs
        self.max_len = max_len
        self.device = torch.device(runner.device)
        self.num_nodes = num_nodes
        self.k_slots = max_depth + 1
        self.vocab_size = int(runner.vocab_size)
        self.use_cuda_graphs = (
            use_cuda_graphs
            and self.device.type == "cuda"
            and bool(getattr(drafter, "graph_safe", False))
            and bool(getattr(runner, "graph_safe", True))
        )
        self.cache = runner.allocate_cache(max_reqs, max_len)
        dev, R, N, V, K = self.device, max_reqs, num_nodes, self.vocab_size, self.k_slots

        def i32(*shape, fill=0):
            return torch.full(shape, fill, dtype=torch.int32, device=dev)

        self._root = i32(R)
        self._text = i32(R, max_len, fill=PAD_TOKEN)
        self._text_len = i32(R)
        self._prompt_len = i32(R)
        self._num_generated = i32(R)
        self._max_new = i32(R)
        self._finished = torch.ones(R, dtype=torch.bool, device=dev)
        self._tree = DraftTree.empty(R, N, dev)
        self._mask = TreeMask.empty(R, N, dev)
        self._logits = torch.zeros(R, N, V, dtype=torch.float32, device=dev)
        self._verify = VerifyOutput.empty(R, N, max_depth, dev)
        self._new_tokens = i32(R, K, fill=PAD_TOKEN)
        self._num_new = i32(R)
        self._eos = i32(MAX_EOS, fill=PAD_TOKEN)
        self._rng = torch.zeros(2, dtype=torch.int64, device=dev)  # (seed, step counter)
        self._probs: torch.Tensor | None = None  # sampling buffers, allocated on first use
        self._uniforms: torch.Tensor | None = None
        self._exponentials: torch.Tensor | None = None
        self._num_steps = i32(R)
        self._accepted_hist = i32(R, K)
        self._source_counts = i32(R, len(SOURCE_NAMES))
        self._flags_host = torch.zeros(2 * R, dtype=torch.int32, pin_memory=dev.type == "cuda")
        self._batches: dict[int, _Batch] = {}
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._warm: set[tuple] = set()
        self._graph_pool = None
        self._timer: _StageTimer | None = None

    # ------------------------------------------------------------------ buffers

    def _ensure_sampling_buffers(self) -> None:
        if self._probs is None:
            R, N, V = self.max_reqs, self.num_nodes, self.vocab_size
            self._probs = torch.zeros(R, N, V, dtype=torch.float32, device=self.device)
            self._uniforms = torch.zeros(R, N, dtype=torch.float32, device=self.device)
            self._exponentials = torch.ones(R, V, dtype=torch.float32, device=self.device)
            self._batches.clear()  # views must include the new buffers
            self._graphs.clear()
            self._warm.clear()

    def _batch(self, B: int) -> _Batch:
        bt = self._batches.get(B)
        if bt is not None:
            return bt
        state = DecodeState(
            root=self._root[:B],
            cache_len=self.cache.cache_len[:B],
            text=self._text[:B],
            text_len=self._text_len[:B],
            prompt_len=self._prompt_len[:B],
            num_generated=self._num_generated[:B],
            max_new_tokens=self._max_new[:B],
            finished=self._finished[:B],
        )
        tree = DraftTree(self._tree.tokens[:B], self._tree.parents[:B], self._tree.num_nodes[:B])
        mask = TreeMask(self._mask.mask[:B], self._mask.depth[:B], self._mask.positions[:B])
        ver = VerifyOutput(
            self._verify.accepted_nodes[:B],
            self._verify.num_accepted[:B],
            self._verify.bonus[:B],
            self._verify.argmax[:B],
        )
        logits = self._logits[:B]
        step = StepOutput(
            tree=tree,
            logits=logits,
            accepted_nodes=ver.accepted_nodes,
            num_accepted=ver.num_accepted,
            bonus=ver.bonus,
            new_tokens=self._new_tokens[:B],
            num_new=self._num_new[:B],
        )
        state.step = step
        empty = torch.zeros(0, device=self.device)
        bt = _Batch(
            state=state,
            tree=tree,
            mask=mask,
            logits=logits,
            verify=ver,
            step=step,
            k=self.cache.k[:, :B],
            v=self.cache.v[:, :B],
            probs=self._probs[:B] if self._probs is not None else empty,
            uniforms=self._uniforms[:B] if self._uniforms is not None else empty,
            exponentials=self._exponentials[:B] if self._exponentials is not None else empty,
            num_steps=self._num_steps[:B],
            accepted_hist=self._accepted_hist[:B],
            source_counts=self._source_counts[:B],
        )
        self._batches[B] = bt
        return bt

    # ------------------------------------------------------------------ the step

    def _stage(self, name: str):
        if self._timer is not None:
            return self._timer(name)
        return _nvtx(name)

    def _step(self, bt: _Batch, config: GenerationConfig) -> None:
        """One whole decode step on the GPU: no host reads, fixed shapes (graph-capturable)."""
        state, tree, ver = bt.state, bt.tree, bt.verify
        with self._stage("draft"):
            self.drafter.propose(state, tree)
        with self._stage("tree"):
            tree_mask(tree.parents, tree.num_nodes, state.cache_len, out=bt.mask)
        with self._stage("forward"):
            self.runner.forward_tree(
                tree.tokens, bt.mask.positions, bt.mask.mask, self.cache, bt.logits
            )
        with self._stage("verify"):
            if config.is_sampling:
                draw_randoms(self._rng, bt.uniforms, bt.exponentials)
                sampling_probs(
                    bt.logits,
                    temperature=config.temperature,
                    top_k=config.top_k,
                    top_p=config.top_p,
                    out=bt.probs,
                )
                verify_sample(
                    bt.probs,
                    tree.tokens,
                    tree.parents,
                    tree.num_nodes,
                    bt.uniforms,
                    bt.exponentials,
                    out=ver,
                )
            else:
                verify_greedy(bt.logits, tree.tokens, tree.parents, tree.num_nodes, out=ver)
        with self._stage("commit"):
            kv_compact(bt.k, bt.v, state.cache_len, ver.accepted_nodes, ver.num_accepted)
            self._accumulate_stats(bt)
            commit(
                tree.tokens,
                ver.accepted_nodes,
                ver.num_accepted,
                ver.bonus,
                self._eos,
                text=state.text,
                text_len=state.text_len,
                cache_len=state.cache_len,
                num_generated=state.num_generated,
                max_new_tokens=state.max_new_tokens,
                finished=state.finished,
                root=state.root,
                new_tokens=bt.step.new_tokens,
                num_new=bt.step.num_new,
            )
        with self._stage("update"):
            self.drafter.update(state, bt.step)

    def _accumulate_stats(self, bt: _Batch) -> None:
        """Per-sequence counters for live sequences (before commit marks new finishes)."""
        live = (~bt.state.finished).to(torch.int32)
        bt.num_steps.add_(live)
        index = bt.verify.num_accepted.clamp(0, self.k_slots - 1).long().unsqueeze(1)
        bt.accepted_hist.scatter_add_(1, index, live.unsqueeze(1))
        source = getattr(self.drafter, "last_source", None)
        if source is not None:
            src = source[: live.shape[0]].long().clamp(0, len(SOURCE_NAMES) - 1).unsqueeze(1)
            bt.source_counts.scatter_add_(1, src, live.unsqueeze(1))

    def _run_step(self, bt: _Batch, config: GenerationConfig) -> None:
        if not self.use_cuda_graphs:
            self._step(bt, config)
            return
        key = (
            bt.state.num_reqs,
            config.is_sampling,
            config.temperature,
            config.top_k,
            config.top_p,
        )
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
            return
        if key not in self._warm:
            # Warm-up (a real step): Triton compilation and allocations happen outside capture.
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._step(bt, config)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._warm.add(key)
            return
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            self._step(bt, config)
        self._graphs[key] = graph
        graph.replay()

    def profile_stages(
        self, prompts: list[list[int]], config: GenerationConfig, max_steps: int = 32
    ) -> dict[str, float] | None:
        """Mean GPU milliseconds per step of each stage (draft, tree, forward, verify, commit,
        update) over up to `max_steps` eager steps of the first batch of `prompts`, from CUDA
        events (which separate the stages, so the sum exceeds a graph replay's step time).
        None on CPU."""
        if self.device.type != "cuda" or not prompts:
            return None
        prompts = [list(map(int, p)) for p in prompts[: self.max_reqs]]
        self._validate(prompts, config)
        self._configure(config)
        bt = self._batch(len(prompts))
        self._prefill(bt, prompts, config)
        self._step(bt, config)  # warm-up (compilation) outside the timing
        self._timer = _StageTimer()
        try:
            steps = min(max_steps, config.max_new_tokens - 1)
            for _ in range(steps):
                self._step(bt, config)
            return self._timer.mean_ms(steps)
        finally:
            self._timer = None

    # ------------------------------------------------------------------ generate

    def _validate(self, prompts: list[list[int]], config: GenerationConfig) -> None:
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
            lo, hi = min(p), max(p)
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"prompt {i} has token id {bad} outside the vocabulary [0, {self.vocab_size})"
                )
            need = len(p) + config.max_new_tokens + self.num_nodes
            if need > self.max_len:
                raise ValueError(
                    f"prompt {i}: {len(p)} prompt tokens + max_new_tokens {config.max_new_tokens}"
                    f" + {self.num_nodes} draft nodes = {need} exceeds max_len={self.max_len}; "
                    "shorten the prompt, lower max_new_tokens or build the Decoder with a larger "
                    "max_len"
                )
        for t in config.eos_token_ids:
            if not 0 <= t < self.vocab_size:
                raise ValueError(f"eos token id {t} outside the vocabulary [0, {self.vocab_size})")

    def _configure(self, config: GenerationConfig) -> None:
        """Per-call device settings: EOS ids (fixed-size buffer), sampling seed and buffers."""
        if config.is_sampling:
            self._ensure_sampling_buffers()
        eos = list(config.eos_token_ids) + [PAD_TOKEN] * (MAX_EOS - len(config.eos_token_ids))
        self._eos.copy_(torch.tensor(eos, dtype=torch.int32))
        seed = config.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self._rng.copy_(torch.tensor([seed, 0], dtype=torch.int64))

    def generate(
        self,
        prompts: list[list[int]],
        config: GenerationConfig,
        on_progress: Callable[[ProgressInfo], None] | None = None,
    ) -> GenerationOutput:
        """Generate for every prompt (token ids); batches of at most max_reqs, in order."""
        prompts = [list(map(int, p)) for p in prompts]
        self._validate(prompts, config)
        if not prompts:
            return GenerationOutput(tokens=[], stats=[])
        self._configure(config)
        t0 = time.perf_counter()
        tokens: list[list[int]] = []
        stats: list[RequestStats] = []
        if config.continuous and len(prompts) > self.max_reqs:
            tokens, stats = self._generate_continuous(prompts, config, on_progress, t0)
            return GenerationOutput(tokens=tokens, stats=stats)
        starts = list(range(0, len(prompts), self.max_reqs))
        for batch_index, start in enumerate(starts):
            chunk = prompts[start : start + self.max_reqs]
            ids = list(range(start, start + len(chunk)))
            out_tokens, out_stats = self._generate_batch(
                chunk, ids, config, on_progress, batch_index, len(starts), t0
            )
            tokens += out_tokens
            stats += out_stats
        return GenerationOutput(tokens=tokens, stats=stats)

    def _load_prompts(self, bt: _Batch, rows: torch.Tensor, prompts: list[list[int]], config):
        """Give slots `rows` [n] new prompts: reset their text, lengths, root, counters and
        finished flag. Returns the runner's prefill input: prompt[:-1] right-padded [n, W] on the
        device (W = 0 when every prompt is one token) and its lengths [n]."""
        n, dev, st = len(prompts), self.device, bt.state
        lengths = [len(p) for p in prompts]
        width = max(lengths) - 1
        text = torch.full((n, self.max_len), PAD_TOKEN, dtype=torch.int32)
        input_ids = torch.zeros(n, width, dtype=torch.int32)
        for i, p in enumerate(prompts):
            text[i, : len(p)] = torch.tensor(p, dtype=torch.int32)
            input_ids[i, : len(p) - 1] = text[i, : len(p) - 1]
        lens = torch.tensor(lengths, dtype=torch.int32, device=dev)
        st.text.index_copy_(0, rows, text.to(dev))
        st.text_len.index_copy_(0, rows, lens)
        st.prompt_len.index_copy_(0, rows, lens)
        last = torch.tensor([p[-1] for p in prompts], dtype=torch.int32, device=dev)
        st.root.index_copy_(0, rows, last)
        st.max_new_tokens.index_fill_(0, rows, config.max_new_tokens)
        for t in (st.num_generated, bt.num_steps, bt.accepted_hist, bt.source_counts):
            t.index_fill_(0, rows, 0)
        bt.step.num_new.index_fill_(0, rows, 0)
        bt.step.new_tokens.index_fill_(0, rows, PAD_TOKEN)
        st.finished.index_fill_(0, rows, False)
        return input_ids.to(dev), lens - 1

    def _prefill(self, bt: _Batch, prompts: list[list[int]], config: GenerationConfig) -> None:
        rows = torch.arange(len(prompts), device=self.device)
        input_ids, prefix_len = self._load_prompts(bt, rows, prompts, config)
        if input_ids.shape[1] > 0:
            self.runner.prefill(input_ids, prefix_len, self.cache)
        bt.state.cache_len.copy_(prefix_len)
        self.drafter.prefill(bt.state)

    def _collect_rows(self, bt: _Batch, rows: list[int]) -> list[tuple[list[int], RequestStats]]:
        """Tokens and statistics of the requests in `rows` (one host read of those rows)."""
        st = bt.state
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        text = st.text.index_select(0, idx).cpu()
        prompt_len = st.prompt_len.index_select(0, idx).cpu().tolist()
        num_generated = st.num_generated.index_select(0, idx).cpu().tolist()
        num_steps = bt.num_steps.index_select(0, idx).cpu().tolist()
        hist = bt.accepted_hist.index_select(0, idx).cpu().tolist()
        sources = bt.source_counts.index_select(0, idx).cpu().tolist()
        has_sources = getattr(self.drafter, "last_source", None) is not None
        out = []
        for i in range(len(rows)):
            gen, steps = num_generated[i], num_steps[i]
            toks = text[i, prompt_len[i] : prompt_len[i] + gen].tolist()
            stat = RequestStats(
                steps=steps,
                generated=gen,
                mat=gen / steps if steps else 0.0,
                tokens_per_s=0.0,
                accepted_hist=hist[i],
                sources=(
                    {SOURCE_NAMES[s]: n for s, n in enumerate(sources[i]) if n}
                    if has_sources
                    else {}
                ),
                prefill_s=0.0,
                decode_s=0.0,
            )
            out.append((toks, stat))
        return out

    def _read_flags(self, bt: _Batch) -> tuple[list[int], list[int]]:
        """The one host read of the loop, every check_every steps: finished flags and lengths."""
        B, st = bt.state.num_reqs, bt.state
        host = self._flags_host[: 2 * B]
        packed = torch.cat([st.finished.to(torch.int32), st.num_generated])
        if self.device.type == "cuda":
            host.copy_(packed, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            event.synchronize()
        else:
            host.copy_(packed)
        flags = host.tolist()
        return flags[:B], flags[B:]

    def _generate_batch(self, prompts, ids, config, on_progress, batch_index, num_batches, t0):
        B = len(prompts)
        bt = self._batch(B)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t_start = time.perf_counter()
        self._prefill(bt, prompts, config)
        sync()
        t_prefill = time.perf_counter()
        max_steps = config.max_new_tokens
        steps = 0
        while True:
            for _ in range(min(config.check_every, max_steps - steps)):
                self._run_step(bt, config)
                steps += 1
            finished, num_generated = self._read_flags(bt)
            if on_progress is not None:
                on_progress(
                    ProgressInfo(
                        batch_index=batch_index,
                        num_batches=num_batches,
                        request_ids=ids,
                        num_reqs=B,
                        steps=steps,
                        num_generated=num_generated,
                        num_finished=sum(finished),
                        elapsed_s=time.perf_counter() - t0,
                        read_tokens=functools.partial(self._host_tokens, bt, num_generated),
                    )
                )
            if all(finished) or steps >= max_steps:
                break
        t_end = time.perf_counter()
        return self._collect(bt, t_prefill - t_start, t_end - t_prefill)

    def _host_tokens(self, bt: _Batch, num_generated: list[int]) -> list[list[int]]:
        st = bt.state
        text = st.text.cpu()
        prompt_len = st.prompt_len.cpu().tolist()
        return [
            text[b, prompt_len[b] : prompt_len[b] + num_generated[b]].tolist()
            for b in range(st.num_reqs)
        ]

    def _collect(self, bt: _Batch, prefill_s: float, decode_s: float):
        """Tokens and statistics of every request of a finished batch."""
        tokens, stats = [], []
        for toks, stat in self._collect_rows(bt, list(range(bt.state.num_reqs))):
            stat.prefill_s, stat.decode_s = prefill_s, decode_s
            stat.tokens_per_s = stat.generated / decode_s if decode_s > 0 else 0.0
            tokens.append(toks)
            stats.append(stat)
        return tokens, stats
