"""Continuous batching for the decode loop (GenerationConfig.continuous): one batch of slots
through which all prompts flow; at each host check, finished slots are read out and take the next
prompts. Decoder inherits these methods; see samgpu.decoding.loop for the rest of the loop."""

from __future__ import annotations

import time

import torch

from samgpu.decoding.config import ProgressInfo, RequestStats


class ContinuousBatching:
    """Decoder methods for continuous batching (they use the Decoder's buffers and helpers)."""

    def _refill(self, bt, slots: list[int], prompts: list[list[int]], config) -> None:
        """Put `prompts` into the finished `slots` of a running batch (continuous batching): their
        rows of every state buffer are reset (_load_prompts, as for a batch), prompt[:-1] goes
        through the runner's prefill into a scratch cache of len(slots) rows whose K/V rows are
        copied into the slots, and the drafter sets up those rows only. Other slots are not
        touched."""
        rows = torch.tensor(slots, dtype=torch.long, device=self.device)
        input_ids, prefix_len = self._load_prompts(bt, rows, prompts, config)
        width = input_ids.shape[1]
        if width > 0:
            scratch = self.runner.allocate_cache(len(slots), width)
            self.runner.prefill(input_ids, prefix_len, scratch)
            self.cache.k[:, :, :, :width].index_copy_(1, rows, scratch.k)
            self.cache.v[:, :, :, :width].index_copy_(1, rows, scratch.v)
        self.cache.cache_len.index_copy_(0, rows, prefix_len)
        self.drafter.prefill_rows(bt.state, rows)

    def _generate_continuous(self, prompts, config, on_progress, t0):
        """All prompts through one batch of min(max_reqs, len(prompts)) slots; see _refill."""
        if not hasattr(self.drafter, "prefill_rows"):
            raise ValueError(
                f"drafter {self.drafter.name!r} has no prefill_rows: continuous batching needs it"
            )
        B = min(self.max_reqs, len(prompts))
        bt = self._batch(B)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        tokens: list[list[int] | None] = [None] * len(prompts)
        stats: list[RequestStats | None] = [None] * len(prompts)
        occupant: list[int | None] = list(range(B))  # request index held by each slot
        waiting = list(range(B, len(prompts)))
        sync()
        start = time.perf_counter()
        self._prefill(bt, prompts[:B], config)
        sync()
        started = [time.perf_counter()] * B  # decode start of each slot's request
        start_step = [0] * B  # loop step at which each slot's request started
        prefill_s = [started[0] - start] * B
        done_tokens = done_steps = steps = 0
        # every step emits >= 1 token per live sequence: a safety bound on the whole call
        max_steps = len(prompts) * config.max_new_tokens + config.check_every
        while True:
            for _ in range(config.check_every):
                self._run_step(bt, config)
            steps += config.check_every
            finished, num_generated = self._read_flags(bt)
            ended = [b for b in range(B) if finished[b] and occupant[b] is not None]
            if steps >= max_steps:
                ended = [b for b in range(B) if occupant[b] is not None]
            if ended:
                now = time.perf_counter()
                for b, (toks, stat) in zip(ended, self._collect_rows(bt, ended), strict=True):
                    req = occupant[b]
                    stat.prefill_s, stat.decode_s = prefill_s[b], now - started[b]
                    stat.tokens_per_s = stat.generated / stat.decode_s if stat.decode_s else 0.0
                    tokens[req], stats[req] = toks, stat
                    done_tokens += stat.generated
                    done_steps += stat.steps
                    occupant[b] = None
                refill = ended[: len(waiting)] if steps < max_steps else []
                if refill:
                    new, waiting = waiting[: len(refill)], waiting[len(refill) :]
                    t_refill = time.perf_counter()
                    self._refill(bt, refill, [prompts[i] for i in new], config)
                    sync()
                    t_done = time.perf_counter()
                    for b, req in zip(refill, new, strict=True):
                        occupant[b], started[b], prefill_s[b] = req, t_done, t_done - t_refill
                        start_step[b], num_generated[b] = steps, 0
            if on_progress is not None:
                live = [b for b in range(B) if occupant[b] is not None]
                on_progress(
                    ProgressInfo(
                        batch_index=0,
                        num_batches=1,
                        request_ids=[occupant[b] for b in live],
                        num_reqs=len(live),
                        steps=steps,
                        num_generated=[num_generated[b] for b in live],
                        num_finished=sum(t is not None for t in tokens),
                        elapsed_s=time.perf_counter() - t0,
                        done_tokens=done_tokens,
                        done_steps=done_steps,
                        num_steps=[steps - start_step[b] for b in live],
                    )
                )
            if all(o is None for o in occupant):
                break
        return tokens, stats
