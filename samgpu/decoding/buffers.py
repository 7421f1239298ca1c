"""The engine's step buffers: one `StepBuffers` set per tree width, allocated once at capacity, and
`StepViews`, the B leading rows of every buffer that one (width, mode) of steps runs over. Views
are cached per key, so captured CUDA graphs keep pointing at the same memory. Also the uploads
between queued steps (`PinnedRing`, `upload`, an admission's `upload_admission`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from samgpu.decoding.config import RequestStats
from samgpu.kernels.load_rows import load_rows
from samgpu.types import (
    PAD_TOKEN,
    SOURCE_NAMES,
    SOURCE_NONE,
    DecodeState,
    DraftTree,
    StepOutput,
    TreeMask,
    VerifyOutput,
)


def aligned_len(n: int) -> int:
    """`n` int32 entries rounded up to 16 bytes: the offset of the next part of one uploaded
    buffer. Kernels read the parts as separate pointers, and Triton specializes a pointer on
    16-byte alignment: a part whose offset changes between admissions (e.g. at 12 n bytes) compiled
    a new kernel variant in the middle of runs."""
    return -(-n // 4) * 4


class PinnedRing:
    """Host-to-device copies that do not wait for the stream (an admission lands between queued
    decode steps: a pageable copy would wait for all of them), through a ring of SLOTS pinned
    buffers, each grown to fit and reused once the copy from it is done (an event each). Why not
    `pin_memory()` per copy: ~1 ms of host time each on the H200's host, 6 per overlapped
    admission (H200, B=256: ~160 ms of a 2.7 s run while the loop waited)."""

    SLOTS = 16

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor | None] = [None] * self.SLOTS
        self._done: list[torch.cuda.Event | None] = [None] * self.SLOTS
        self._next = 0

    def copy(self, host: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """dst.copy_(host) on dst's current stream, not blocking the host; returns dst."""
        i = self._next
        self._next = (i + 1) % self.SLOTS
        done = self._done[i]
        if done is None:
            done = self._done[i] = torch.cuda.Event()
        else:
            done.synchronize()  # (the copy of SLOTS copies ago: long done in practice)
        host = host.contiguous()
        nbytes = host.numel() * host.element_size()
        buffer = self._buffers[i]
        if buffer is None or buffer.numel() < nbytes:
            size = max(4096, 1 << (nbytes - 1).bit_length())
            buffer = self._buffers[i] = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        staged = buffer[:nbytes].view(host.dtype).view(host.shape)
        staged.copy_(host)
        dst.copy_(staged, non_blocking=True)
        done.record(torch.cuda.current_stream(dst.device))
        return dst


_RINGS: dict[torch.device, PinnedRing] = {}


def copy_to_device(host: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """dst.copy_(host) that does not wait for the stream's queued work (PinnedRing on CUDA)."""
    if dst.device.type != "cuda":
        return dst.copy_(host)
    ring = _RINGS.get(dst.device)
    if ring is None:
        ring = _RINGS[dst.device] = PinnedRing()
    return ring.copy(host, dst)


def copy_to_host(src: torch.Tensor, host: torch.Tensor) -> Callable[[], torch.Tensor]:
    """src into the leading elements of `host` (pinned on CUDA: the copy is queued, the host does
    not wait); the returned call waits for the copy (an event on src's stream) and gives it."""
    dst = host[: src.numel()].view(src.shape).copy_(src, non_blocking=True)
    done = torch.cuda.Event() if src.is_cuda else None
    if done is not None:
        done.record(torch.cuda.current_stream(src.device))  # (the copy's stream)

    def wait() -> torch.Tensor:
        if done is not None:
            done.synchronize()
        return dst

    return wait


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` (copy_to_device into a new tensor)."""
    if device.type != "cuda":
        return host.to(device)
    return copy_to_device(host, torch.empty(host.shape, dtype=host.dtype, device=device))


def upload_rows(rows: list[int], device: torch.device) -> torch.Tensor:
    """Slot indices [n] int64 on `device` (upload)."""
    return upload(torch.tensor(rows, dtype=torch.long), device)


def upload_admission(
    rows: list[int], prompts: list[list[int]], keys: list[int] | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An admission's inputs in one upload: (keys [n] int64 (`rows` when None), index [n] int64,
    lens [n] int32, text [n, longest] int32 padded with PAD_TOKEN) on `device`, views of one
    buffer whose parts start at 16 bytes (`aligned_len`); the keys travel as int32 pairs, viewed
    as int64 on the device (no kernel)."""
    n, longest = len(prompts), max(map(len, prompts))
    rows_at, lens_at, text_at = (k * aligned_len(n) for k in (2, 3, 4))
    host = np.full(text_at + n * longest, PAD_TOKEN, dtype=np.int32)
    host[: 2 * n] = np.array(rows if keys is None else keys, dtype=np.int64).view(np.int32)
    host[rows_at : rows_at + n], host[lens_at : lens_at + n] = rows, [len(p) for p in prompts]
    fill = np.arange(longest) < host[lens_at : lens_at + n, None]
    host[text_at:].reshape(n, longest)[fill] = list(itertools.chain(*prompts))
    packed = upload(torch.from_numpy(host), device)
    keys64, index = packed[: 2 * n].view(torch.int64), packed[rows_at : rows_at + n].long()
    return keys64, index, packed[lens_at : lens_at + n], packed[text_at:].view(n, longest)


class StepBuffers:
    """The buffers of one step at a tree width N (capacity rows): the tree, its mask, the step's
    outputs (logits, verification, emitted tokens, hidden states) and, once sampling is asked
    for, its probabilities. The engine keeps one set at the drafter's N and, for a drafter that
    drafts, one at N = 1 for plain autoregressive steps (adaptive speculation)."""

    def __init__(self, R: int, N: int, K: int, V: int, device, hidden_size, dtype, logits_dtype):
        self.R, self.N, self.V, self.device = R, N, V, device
        self.tree = DraftTree.empty(R, N, device)
        self.mask = TreeMask.empty(R, N, device)
        hidden = None
        if hidden_size is not None:
            hidden = torch.zeros(R, N, hidden_size, dtype=dtype, device=device)
        self.step = StepOutput(
            tree=self.tree,
            # the runner's (the fast one's: the model dtype, written by its lm_head directly)
            logits=torch.zeros(R, N, V, dtype=logits_dtype, device=device),
            verify=VerifyOutput.empty(R, N, K - 1, device),
            start_len=torch.zeros(R, dtype=torch.int32, device=device),
            new_tokens=torch.full((R, K), PAD_TOKEN, dtype=torch.int32, device=device),
            num_new=torch.zeros(R, dtype=torch.int32, device=device),
            hidden=hidden,
        )
        self.probs: torch.Tensor | None = None

    def allocate_sampling(self) -> None:
        if self.probs is None:
            R, N, V, dev = self.R, self.N, self.V, self.device
            self.probs = torch.zeros(R, N, V, dtype=torch.float32, device=dev)


@dataclass
class StepViews:
    """The B leading rows of every capacity buffer for one step width (stable across calls with
    the same B and width, so captured graphs keep pointing at them)."""

    state: DecodeState
    tree: DraftTree
    mask: TreeMask
    step: StepOutput
    k: torch.Tensor  # [L, B, Hkv, max_len, D] view of the cache
    v: torch.Tensor
    speculate: bool  # drafting steps (the drafter's tree) or plain AR steps (root only)
    probs: torch.Tensor  # [B, N, V] float32 (sampling)
    sample_keys: torch.Tensor  # [B] int64; each slot's request key (sampling)
    num_steps: torch.Tensor  # [B] int32; live steps
    accepted_hist: torch.Tensor  # [B, K] int32
    source_counts: torch.Tensor  # [B, len(SOURCE_NAMES)] int32

    def accumulate_stats(self, source: torch.Tensor | None) -> None:
        """Per-slot counters for live sequences, before commit marks new finishes (in the step;
        `source`: the drafter's last_source)."""
        live = (~self.state.finished).to(torch.int32)
        self.num_steps.add_(live)
        k = self.accepted_hist.shape[1]
        index = self.step.verify.num_accepted.clamp(0, k - 1).long().unsqueeze(1)
        self.accepted_hist.scatter_add_(1, index, live.unsqueeze(1))
        if source is not None and self.speculate:
            src = source[: live.shape[0]].long().clamp(0, len(SOURCE_NAMES) - 1).unsqueeze(1)
            self.source_counts.scatter_add_(1, src, live.unsqueeze(1))
        elif source is not None:  # plain AR steps draft nothing
            self.source_counts[:, SOURCE_NONE].add_(live)

    def read_rows(
        self, idx: torch.Tensor, stats: bool, host: torch.Tensor
    ) -> Callable[[], list[tuple[list[int], list[int]]]]:
        """Slots `idx`: per row its generated tokens and, with `stats`, [num_steps,
        accepted_hist.., source_counts..]. The device gather and one copy into `host` (pinned on
        CUDA: not blocking) are queued now; the returned call waits for them and reads."""
        st = self.state
        cols = [st.prompt_len[:, None], st.text_len[:, None]]
        if stats:
            cols += [self.num_steps[:, None], self.accepted_hist, self.source_counts]
        width = sum(c.shape[1] for c in cols)
        wait = copy_to_host(torch.cat([*cols, st.text], dim=1).index_select(0, idx), host)

        def read() -> list[tuple[list[int], list[int]]]:
            packed = wait()
            head, text = packed[:, :width].tolist(), packed[:, width:]
            # only each row's generated slice becomes a Python list (a row is max_len tokens)
            return [(text[i, h[0] : h[1]].tolist(), h[2:]) for i, h in enumerate(head)]

        return read

    def read_finished(
        self, idx: torch.Tensor, host: torch.Tensor, has_sources: bool
    ) -> Callable[[], list[tuple[list[int], RequestStats]]]:
        """read_rows of finished slots `idx` with their statistics: the returned call waits for
        the read and gives (tokens, RequestStats) per row (timing fields left at 0)."""
        read, k = self.read_rows(idx, True, host), self.accepted_hist.shape[1]

        def results() -> list[tuple[list[int], RequestStats]]:
            out = []
            for toks, counts in read():
                steps, sources = counts[0], counts[1 + k :]
                stat = RequestStats(
                    steps=steps,
                    generated=len(toks),
                    mat=len(toks) / steps if steps else 0.0,
                    tokens_per_s=0.0,
                    accepted_hist=counts[1 : 1 + k],
                    sources={
                        SOURCE_NAMES[j]: n for j, n in enumerate(sources) if n and has_sources
                    },
                    prefill_s=0.0,
                    decode_s=0.0,
                )
                out.append((toks, stat))
            return out

        return results

    def load_rows(
        self,
        index: torch.Tensor,
        text: torch.Tensor,
        lens: torch.Tensor,
        budget: int,
        keys: torch.Tensor,
    ):
        """New requests in slots `index`: their text [n, W <= max_len] (the prompts, padded; the
        rows' columns past W become padding too), lengths [n] and sampling keys [n] int64; roots
        = last prompt tokens; budgets; counters and last step's output reset; not finished (one
        launch: kernels/load_rows.py)."""
        counters = (self.num_steps, self.accepted_hist, self.source_counts, self.step.num_new)
        counters += (self.step.new_tokens, self.sample_keys)
        load_rows(self.state, counters, index, text, lens, keys, budget)
