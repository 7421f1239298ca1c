"""The stages of a decode step, named once, and how they are observed: NVTX ranges by default
(Nsight), torch.profiler ranges with the CLI's --profile, CUDA events in `Engine.profile_stages`.
An engine runs each stage inside `stage_range(name)`; any callable returning a context manager
will do."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

STAGES: tuple[str, ...] = ("draft", "tree", "forward", "verify", "commit", "update")
StageRange = Callable[[str], contextlib.AbstractContextManager]


def nvtx_range(name: str) -> contextlib.AbstractContextManager:
    """The default stage range: an NVTX range on CUDA machines (Nsight shows it), else nothing."""
    if torch.cuda.is_available():
        return torch.cuda.nvtx.range(name)
    return contextlib.nullcontext()


class StageTimer:
    """CUDA events around each stage of eager steps (a stage_range; never inside graphs)."""

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
        total: dict[str, float] = {name: 0.0 for name in STAGES}
        for name, start, end in self.events:
            total[name] += start.elapsed_time(end)
        return {name: ms / max(steps, 1) for name, ms in total.items()}
