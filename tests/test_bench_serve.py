"""profiling/bench_serve.py's GPU busy share counts only the samples taken during the generation
(after the model load and warm-up), not the whole CLI call."""

from __future__ import annotations

from profiling.bench_serve import GpuBusy


def test_busy_share_keeps_the_samples_from_the_generation_on():
    busy = GpuBusy()
    # load and warm-up (idle GPU, one compile burst), then the generation (busy)
    busy.samples = [(0.0, 0), (0.5, 0), (1.0, 100), (1.5, 0), (2.0, 90), (2.5, 94), (3.0, 98)]
    assert busy.share(since=2.0) == 0.94
    assert busy.share() != busy.share(since=2.0)  # control: the whole call reads otherwise
    assert abs(busy.share() - 382 / 700) < 1e-12
    assert busy.share(since=3.5) is None  # no sample in the window
    assert GpuBusy().share() is None  # no GPU / NVML
