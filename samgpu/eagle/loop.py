"""The EAGLE head's training loop: AdamW over the head's own tensors, warm-up then cosine decay,
gradient clipping, bf16 autocast on CUDA, a wall-clock budget and an epoch count (whichever ends
first), progress lines, and the held-out measures before and after.

Schedule: progress = max(steps / planned steps, seconds / budget) in [0, 1];
  lr = peak * min(1, (step + 1) / warmup) * (1 + cos(pi * progress)) / 2,
so a run cut by the clock still ends its decay at the budget. planned steps = epochs x the first
epoch's batches (or max_steps, if smaller); an epoch's batches are length-sorted within shuffled
slices (samgpu.eagle.data.shuffled_batches), so they are full (about tokens_per_batch padded
tokens each). Feature noise (EAGLE's): the head's input features get uniform noise of
+-noise x (the features' standard deviation) during training, never the targets.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from samgpu.eagle.data import shuffled_batches
from samgpu.eagle.features import Features, pair_batch
from samgpu.eagle.objective import (
    CE_WEIGHT,
    LOGIT_CHUNK_ROWS,
    TERMS,
    amp_context,
    evaluate,
    pair_terms,
)
from samgpu.errors import InputError

NOISE_STD_ROWS = 65536  # rows whose standard deviation scales the feature noise


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings (module doc)."""

    lr: float = 5e-4  # peak learning rate
    epochs: float = 20.0  # passes over the training sequences (fractions allowed)
    minutes: float = 4.0  # wall-clock budget of the loop (features and the first eval excluded)
    max_steps: int | None = None  # optimizer steps at most
    tokens_per_batch: int = 16384  # padded tokens per step
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 0.5
    noise: float = 0.0  # uniform input-feature noise, in feature standard deviations
    ce_weight: float = CE_WEIGHT
    chunk_rows: int = LOGIT_CHUNK_ROWS
    seed: int = 0
    log_every_s: float = 10.0
    eval_every_epoch: bool = True

    def __post_init__(self):
        positive = {
            "epochs": self.epochs,
            "minutes": self.minutes,
            "tokens_per_batch": self.tokens_per_batch,
            "chunk_rows": self.chunk_rows,
        }
        for name, value in positive.items():
            if not value > 0:
                raise InputError(f"{_flag(name)} must be positive, got {value}")
        non_negative = {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "noise": self.noise,
            "grad_clip": self.grad_clip,
            "ce_weight": self.ce_weight,
            "warmup_steps": self.warmup_steps,
        }
        for name, value in non_negative.items():
            if not value >= 0:  # NaN fails too
                raise InputError(f"{_flag(name)} must be >= 0, got {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"{_flag('max_steps')} must be at least 1, got {self.max_steps}")


def _flag(name: str) -> str:
    """A TrainConfig field with its `samgpu eagle train` flag: "lr (--lr)"."""
    return f"{name} (--{name.replace('_', '-')})"


@dataclass
class TrainResult:
    steps: int
    epochs_done: float  # steps / batches per epoch
    seconds: float  # the loop's wall time
    pairs_seen: int  # loss pairs over all steps
    tokens_seen: int  # sequence tokens over all steps
    stopped_by: str  # "epochs", "max_steps" or "minutes"
    untrained: dict[str, float]  # evaluate() before the first step
    val: dict[str, float]  # evaluate() after the last
    history: list[dict] = field(default_factory=list)  # per-epoch evaluations


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return cfg.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_head(
    head,
    train: Features,
    val: Features,
    cfg: TrainConfig,
    *,
    amp_dtype: torch.dtype | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train `head` (an EagleHead, fp32 weights, on the features' device) in place."""
    device = train.hidden.device
    rng = random.Random(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    say = log or (lambda _msg: None)
    evaluate_kw = dict(
        tokens_per_batch=cfg.tokens_per_batch,
        amp_dtype=amp_dtype,
        ce_weight=cfg.ce_weight,
        chunk_rows=cfg.chunk_rows,
    )
    untrained = evaluate(head, val, **evaluate_kw)
    say(
        f"untrained head: val top1 {untrained['top1']:.4f} top5 {untrained['top5']:.4f}"
        f" loss {untrained['loss']:.4f} ({untrained['pairs']} pairs)"
    )
    params = [p for p in head.trainable().values()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        params,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    noise_scale = 0.0
    if cfg.noise > 0:
        noise_scale = cfg.noise * float(train.hidden[:NOISE_STD_ROWS].float().std())
    lm_head = head.model.lm_head.weight
    budget_s = cfg.minutes * 60.0
    epoch_batches = shuffled_batches(train.lengths, cfg.tokens_per_batch, rng)
    planned = max(1, math.ceil(cfg.epochs * len(epoch_batches)))
    if cfg.max_steps is not None:
        planned = min(planned, cfg.max_steps)
    say(
        f"training: {len(train.examples)} sequences, {train.num_tokens} tokens,"
        f" {len(epoch_batches)} steps per epoch, {planned} planned, budget {cfg.minutes:g} min"
    )

    head.train()
    step = epoch = step_in_epoch = pairs_seen = tokens_seen = 0
    window = torch.zeros(len(TERMS), dtype=torch.float64, device=device)
    window_pairs = window_tokens = 0
    history = []
    stopped_by = None
    t0 = last_log = time.perf_counter()
    while stopped_by is None:
        for ids in epoch_batches:
            elapsed = time.perf_counter() - t0
            if step >= planned:
                stopped_by = "max_steps" if planned == cfg.max_steps else "epochs"
            elif elapsed >= budget_s:
                stopped_by = "minutes"
            if stopped_by:
                break
            lr = lr_at(cfg, step, max(step / planned, elapsed / budget_s))
            for group in opt.param_groups:
                group["lr"] = lr
            batch = pair_batch(train, ids)
            hidden = batch.hidden
            if noise_scale:
                noise = torch.rand(hidden.shape, generator=gen, device=device, dtype=torch.float32)
                hidden = hidden + ((noise * 2 - 1) * noise_scale).to(hidden.dtype)
            with amp_context(device, amp_dtype):
                g = head(batch.next_tokens, hidden).flatten(0, 1)[batch.loss_rows]
                leaf = g.detach().requires_grad_(True)
                target = batch.target.flatten(0, 1)[batch.loss_rows]
                n = batch.num_loss_pairs
                sums = pair_terms(
                    lm_head,
                    leaf,
                    target,
                    ce_weight=cfg.ce_weight,
                    chunk_rows=cfg.chunk_rows,
                    grad_scale=1.0 / max(1, n),
                )
            if n:
                g.backward(leaf.grad)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            step_in_epoch += 1
            window += sums
            window_pairs += n
            window_tokens += sum(train.lengths[i] for i in ids)
            now = time.perf_counter()
            if now - last_log >= cfg.log_every_s:
                means = (window / max(1, window_pairs)).tolist()  # one sync per log line
                say(
                    f"step {step}/{planned} epoch {epoch + step_in_epoch / len(epoch_batches):.2f}"
                    f" | {window_tokens / (now - last_log):,.0f} tokens/s"
                    f" | loss {means[0]:.4f} (reg {means[1]:.4f}, ce {means[2]:.3f})"
                    f" | top1 {means[3]:.3f} top5 {means[4]:.3f} | lr {lr:.2e} | {now - t0:.0f} s"
                )
                pairs_seen += window_pairs
                tokens_seen += window_tokens
                window.zero_()
                window_pairs = window_tokens = 0
                last_log = now
        else:
            epoch += 1
            if cfg.eval_every_epoch and step < planned:
                m = evaluate(head, val, **evaluate_kw)
                history.append({"epoch": epoch, "step": step, **m})
                say(
                    f"epoch {epoch}: val top1 {m['top1']:.4f} top5 {m['top5']:.4f}"
                    f" loss {m['loss']:.4f}"
                )
            epoch_batches = shuffled_batches(train.lengths, cfg.tokens_per_batch, rng)
            step_in_epoch = 0
    seconds = time.perf_counter() - t0
    pairs_seen += window_pairs
    tokens_seen += window_tokens
    result_val = evaluate(head, val, **evaluate_kw)
    say(
        f"trained {step} steps ({stopped_by}) in {seconds:.0f} s: val top1"
        f" {result_val['top1']:.4f} (untrained {untrained['top1']:.4f}) top5"
        f" {result_val['top5']:.4f} loss {result_val['loss']:.4f}"
    )
    return TrainResult(
        steps=step,
        epochs_done=round(epoch + step_in_epoch / max(1, len(epoch_batches)), 3),
        seconds=round(seconds, 2),
        pairs_seen=pairs_seen,
        tokens_seen=tokens_seen,
        stopped_by=stopped_by,
        untrained=untrained,
        val=result_val,
        history=history,
    )


__all__ = ["TrainConfig", "TrainResult", "lr_at", "train_head"]
