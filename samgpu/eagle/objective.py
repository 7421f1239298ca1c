"""The EAGLE objective and the held-out measures, over the loss pairs of a batch.

Per loss pair (g = the head's output, f = the target's feature one position ahead, W = the
target's lm_head, V = vocab_size):
  reg = mean over H of SmoothL1(g, f)                     (feature regression, EAGLE's "vloss")
  ce  = -sum_v softmax(W f)_v * log_softmax(W g)_v        (token term, EAGLE's "ploss")
  loss = reg + ce_weight * ce                             (EAGLE: ce_weight 0.1)
  top1: argmax W g == argmax W f (the head drafts the token the target would emit); top5: argmax
  W f among the 5 largest of W g.
A batch's loss is the mean over its loss pairs. The [N, V] logits are made in chunks of
`chunk_rows` rows: 4096 x 49,152 fp32 is 0.8 GB, and a 16k-pair batch unchunked would hold
several 3 GB tensors. For training, each chunk's backward runs right away (its logits freed)
into the gradient of a detached g, which is then passed back through the head once: the same
gradients as one big backward, without keeping every chunk's logits alive.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from samgpu.eagle.data import sorted_batches
from samgpu.eagle.features import Features, pair_batch

LOGIT_CHUNK_ROWS = 4096
CE_WEIGHT = 0.1
TERMS = ("loss", "reg", "ce", "top1", "top5")  # the sums `pair_terms` returns, in this order


def pair_terms(
    lm_head: torch.Tensor,
    g: torch.Tensor,
    target: torch.Tensor,
    *,
    ce_weight: float = CE_WEIGHT,
    chunk_rows: int = LOGIT_CHUNK_ROWS,
    grad_scale: float | None = None,
) -> torch.Tensor:
    """Sums over N pairs of TERMS (module doc) as a float64 tensor [5] on g's device.

    lm_head [V, H]; g [N, H]; target [N, H] (f[p+1]). With `grad_scale`, g must be a leaf that
    requires grad: grad_scale * d(sum of loss)/dg is accumulated into g.grad, chunk by chunk."""
    if g.shape != target.shape or g.ndim != 2:
        raise ValueError(f"g {tuple(g.shape)} and target {tuple(target.shape)} must be [N, H]")
    if grad_scale is not None and not (g.is_leaf and g.requires_grad):
        raise ValueError("pair_terms with grad_scale needs g as a leaf that requires grad")
    sums = torch.zeros(len(TERMS), dtype=torch.float64, device=g.device)
    if g.shape[0] == 0:
        return sums
    reg = F.smooth_l1_loss(g.float(), target.float(), reduction="none").mean(-1).sum()
    if grad_scale is not None:
        (reg * grad_scale).backward()
    sums[1] = reg.detach()
    for lo in range(0, g.shape[0], chunk_rows):
        g_c, f_c = g[lo : lo + chunk_rows], target[lo : lo + chunk_rows]
        with torch.no_grad():
            target_logits = F.linear(f_c.to(lm_head.dtype), lm_head)
            target_token = target_logits.argmax(-1)
            target_probs = target_logits.float().softmax(-1)
            del target_logits
        logits = F.linear(g_c, lm_head).float()
        ce = -(target_probs * logits.log_softmax(-1)).sum()
        if grad_scale is not None:
            (ce * (ce_weight * grad_scale)).backward()
        with torch.no_grad():
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            sums[2] += ce.detach()
            sums[3] += (top5[:, 0] == target_token).sum()
            sums[4] += (top5 == target_token[:, None]).any(-1).sum()
        del logits, target_probs
    sums[0] = sums[1] + ce_weight * sums[2]
    return sums


def amp_context(device: torch.device, amp_dtype: torch.dtype | None):
    """bf16 autocast on CUDA when asked (the head's weights stay fp32), else nothing."""
    if amp_dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype)


@torch.no_grad()
def evaluate(
    head,
    features: Features,
    *,
    tokens_per_batch: int,
    amp_dtype: torch.dtype | None = None,
    ce_weight: float = CE_WEIGHT,
    chunk_rows: int = LOGIT_CHUNK_ROWS,
) -> dict[str, float]:
    """Held-out measures over every loss pair of `features`: top1, top5, loss, reg, ce (means)
    and pairs (their number)."""
    device = features.hidden.device
    sums = torch.zeros(len(TERMS), dtype=torch.float64, device=device)
    num_pairs = 0
    was_training = head.training
    head.eval()
    with amp_context(device, amp_dtype):
        for ids in sorted_batches(features.lengths, tokens_per_batch):
            batch = pair_batch(features, ids)
            g = head(batch.next_tokens, batch.hidden).flatten(0, 1)[batch.loss_rows]
            target = batch.target.flatten(0, 1)[batch.loss_rows]
            sums += pair_terms(
                head.model.lm_head.weight, g, target, ce_weight=ce_weight, chunk_rows=chunk_rows
            )
            num_pairs += batch.num_loss_pairs
    head.train(was_training)
    means = (sums / max(1, num_pairs)).tolist()
    return {**dict(zip(TERMS, means, strict=True)), "pairs": num_pairs}


__all__ = ["CE_WEIGHT", "LOGIT_CHUNK_ROWS", "TERMS", "amp_context", "evaluate", "pair_terms"]
