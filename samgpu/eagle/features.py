"""The frozen target's features for EAGLE training, kept on the device, and batches cut from them.

Features: f = the target's last hidden state after its final norm (`model.model(...)
.last_hidden_state`, the input of its lm_head), one row per token of every sequence, flat:
  tokens [num_tokens] int64, hidden [num_tokens, hidden_size] (the target's dtype: bf16 on CUDA),
  seq_offsets [n+1] with a leading 0 (sequence i is rows seq_offsets[i]:seq_offsets[i+1]).
The target runs over length-sorted, right-padded batches under a token budget; with causal
attention and the padding masked, a sequence's rows do not depend on its batch.
Size: num_tokens x hidden_size x 2 B in bf16 (SmolLM2-135M over the shipped responses: the
tokens and GB of the run docs/EAGLE.md reports).

A training batch (`pair_batch`) is B sequences right-padded to T tokens, as pairs:
  next_tokens [B, T-1] = x[:, 1:], hidden [B, T-1, H] = f[:, :-1], target [B, T-1, H] = f[:, 1:],
  loss_mask [B, T-1] bool = the Examples' loss pairs (padding and prompt pairs False).
  Example: lengths (5, 3), loss ranges ((2, 4), (1, 2)) -> loss_mask rows [0 0 1 1], [0 1 0 0].
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from samgpu.decoding.buffers import upload
from samgpu.eagle.data import Example, sorted_batches


@dataclass
class Features:
    """Token ids and target features of a list of Examples (module doc)."""

    examples: list[Example]
    tokens: torch.Tensor  # [num_tokens] int64
    hidden: torch.Tensor  # [num_tokens, hidden_size] the target's last_hidden_state
    seq_offsets: torch.Tensor  # [n+1] int64, CPU, leading 0

    def __post_init__(self):
        self.lengths = [len(e.tokens) for e in self.examples]

    @property
    def num_tokens(self) -> int:
        return int(self.seq_offsets[-1])


@dataclass
class PairBatch:
    """B sequences as pairs (module doc); T' = the longest length - 1."""

    next_tokens: torch.Tensor  # [B, T'] int64 x[p+1] (0 past a sequence's end)
    hidden: torch.Tensor  # [B, T', H] f[p]
    target: torch.Tensor  # [B, T', H] f[p+1]
    loss_mask: torch.Tensor  # [B, T'] bool
    loss_rows: torch.Tensor  # [N] int64 flat indices of loss_mask's True entries, row-major

    @property
    def num_loss_pairs(self) -> int:
        return int(self.loss_rows.shape[0])


@torch.no_grad()
def extract_features(
    model,
    examples: list[Example],
    *,
    tokens_per_batch: int,
    log: Callable[[str], None] | None = None,
    log_every_s: float = 10.0,
) -> Features:
    """Run the frozen target (its device and dtype) over `examples`; keep its last hidden state."""
    device = next(model.parameters()).device
    backbone = model.model  # Llama-family: the decoder stack, final norm included
    lengths = [len(e.tokens) for e in examples]
    offsets = torch.zeros(len(examples) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    num_tokens = int(offsets[-1])
    hidden = torch.empty(num_tokens, model.config.hidden_size, device=device, dtype=model.dtype)
    tokens = torch.tensor([t for e in examples for t in e.tokens], dtype=torch.int64)
    tokens = tokens.to(device)
    t0 = last_log = time.perf_counter()
    done = 0
    for batch in sorted_batches(lengths, tokens_per_batch):
        idx, valid = _padded_rows(offsets, lengths, batch)
        idx, valid = idx.to(device), valid.to(device)
        ids = torch.where(valid, tokens[idx], 0)
        out = backbone(input_ids=ids, attention_mask=valid.long(), use_cache=False)
        hidden[idx[valid]] = out.last_hidden_state[valid].to(hidden.dtype)
        done += sum(lengths[i] for i in batch)
        if log is not None and time.perf_counter() - last_log >= log_every_s:
            last_log = time.perf_counter()
            rate = done / (last_log - t0)
            log(f"features: {done}/{num_tokens} tokens, {rate:,.0f} tokens/s")
    return Features(examples, tokens, hidden, offsets)


def _padded_rows(
    offsets: torch.Tensor, lengths: Sequence[int], batch: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat row of every (sequence, position) of a right-padded batch, and which are real:
    idx [B, T] int64 (a padding slot repeats its sequence's last row), valid [B, T] bool."""
    lens = torch.tensor([lengths[i] for i in batch], dtype=torch.int64)
    pos = torch.arange(int(lens.max()), dtype=torch.int64)
    valid = pos[None, :] < lens[:, None]
    start = offsets[torch.tensor(list(batch), dtype=torch.int64)]
    idx = start[:, None] + torch.minimum(pos[None, :], lens[:, None] - 1)
    return idx, valid


def pair_batch(features: Features, batch: Sequence[int]) -> PairBatch:
    """The pairs of sequences `batch` (module doc), on the features' device."""
    device = features.hidden.device
    idx, valid = _padded_rows(features.seq_offsets, features.lengths, batch)
    num_pairs = idx.shape[1] - 1
    pos = torch.arange(num_pairs)
    ranges = torch.tensor([features.examples[i].loss_range() for i in batch], dtype=torch.int64)
    loss_mask = (pos[None, :] >= ranges[:, :1]) & (pos[None, :] < ranges[:, 1:])
    loss_rows = loss_mask.flatten().nonzero().squeeze(1)  # on the host: no device sync
    idx, valid, loss_mask, loss_rows = (
        upload(t, device) for t in (idx, valid, loss_mask, loss_rows)
    )
    tokens = torch.where(valid, features.tokens[idx], 0)
    rows = features.hidden[idx]
    return PairBatch(
        next_tokens=tokens[:, 1:],
        hidden=rows[:, :-1],
        target=rows[:, 1:],
        loss_mask=loss_mask,
        loss_rows=loss_rows,
    )


__all__ = ["Features", "PairBatch", "extract_features", "pair_batch"]
