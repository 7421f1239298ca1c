"""The engine's step buffers: one `StepBuffers` set per tree width, allocated once at capacity, and
`StepViews`, the B leading rows of every buffer that one (width, mode) of steps runs over. Views
are cached per key, so captured CUDA graphs keep pointing at the same memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samgpu.types import PAD_TOKEN, DecodeState, DraftTree, StepOutput, TreeMask, VerifyOutput


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to CUDA through pinned memory, not blocking (a pageable copy
    would wait for the stream's queued work: admissions land between queued decode steps)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class StepBuffers:
    """The buffers of one step at a tree width N (capacity rows): the tree, its mask, the step's
    outputs (logits, verification, emitted tokens, hidden states) and, once sampling is asked
    for, its randoms. The engine keeps one set at the drafter's N and, for a drafter that drafts,
    one at N = 1 for plain autoregressive steps (adaptive speculation)."""

    def __init__(self, R: int, N: int, K: int, V: int, device, hidden_size, dtype):
        self.R, self.N, self.V, self.device = R, N, V, device
        self.tree = DraftTree.empty(R, N, device)
        self.mask = TreeMask.empty(R, N, device)
        hidden = None
        if hidden_size is not None:
            hidden = torch.zeros(R, N, hidden_size, dtype=dtype, device=device)
        self.step = StepOutput(
            tree=self.tree,
            logits=torch.zeros(R, N, V, dtype=torch.float32, device=device),
            verify=VerifyOutput.empty(R, N, K - 1, device),
            start_len=torch.zeros(R, dtype=torch.int32, device=device),
            new_tokens=torch.full((R, K), PAD_TOKEN, dtype=torch.int32, device=device),
            num_new=torch.zeros(R, dtype=torch.int32, device=device),
            hidden=hidden,
        )
        self.probs: torch.Tensor | None = None
        self.uniforms: torch.Tensor | None = None

    def allocate_sampling(self) -> None:
        if self.probs is None:
            R, N, V, dev = self.R, self.N, self.V, self.device
            self.probs = torch.zeros(R, N, V, dtype=torch.float32, device=dev)
            self.uniforms = torch.zeros(R, N, dtype=torch.float32, device=dev)


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
    uniforms: torch.Tensor  # [B, N] float32
    exponentials: torch.Tensor  # [B, V] float32
    num_steps: torch.Tensor  # [B] int32; live steps
    accepted_hist: torch.Tensor  # [B, K] int32
    source_counts: torch.Tensor  # [B, len(SOURCE_NAMES)] int32

    def load_rows(self, index: torch.Tensor, text: torch.Tensor, lens: torch.Tensor, budget: int):
        """New requests in slots `index`: their text [n, max_len] (the prompts, padded) and
        lengths [n]; roots = last prompt tokens; budgets; counters and last step's output reset;
        not finished."""
        st = self.state
        st.text.index_copy_(0, index, text)
        st.text_len.index_copy_(0, index, lens)
        st.prompt_len.index_copy_(0, index, lens)
        st.root.index_copy_(0, index, text.gather(1, (lens - 1).long()[:, None])[:, 0])
        st.max_new_tokens.index_fill_(0, index, budget)
        for t in (st.num_generated, self.num_steps, self.accepted_hist, self.source_counts):
            t.index_fill_(0, index, 0)
        self.step.num_new.index_fill_(0, index, 0)
        self.step.new_tokens.index_fill_(0, index, PAD_TOKEN)
        st.finished.index_fill_(0, index, False)
