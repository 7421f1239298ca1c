"""PinnedRing (samgpu.decoding.buffers): host-to-device copies queued behind busy streams, through
a ring of pinned buffers. More copies than the ring has buffers, all queued behind a long kernel:
each lands intact (a buffer is reused only after the copy from it ran); the negative control
skips that wait and finds copies overwritten. CPU: upload / copy_to_device are plain copies."""

from __future__ import annotations

import pytest
import torch

from samgpu.decoding.buffers import PinnedRing, copy_to_device, upload

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _queued_copies(ring: PinnedRing, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`count` copies of distinct host tensors (sizes 1..) queued behind ~100 ms of GPU sleep."""
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # (cycles: ~0.1 s at ~2 GHz) holds the stream's queue
    sources, targets = [], []
    for i in range(count):
        host = torch.arange(i * 1000, i * 1000 + 1 + i % 7, dtype=torch.int32)
        sources.append(host)
        targets.append(ring.copy(host, torch.empty_like(host, device="cuda")))
    torch.cuda.synchronize()
    return sources, targets


@cuda
def test_copies_behind_a_busy_stream_land_intact():
    ring = PinnedRing()
    sources, targets = _queued_copies(ring, 3 * PinnedRing.SLOTS + 1)
    for host, dev in zip(sources, targets, strict=True):
        assert torch.equal(dev.cpu(), host)
    assert torch.equal(upload(sources[5], torch.device("cuda")).cpu(), sources[5])


@cuda
def test_negative_control_reusing_a_buffer_before_its_copy_ran_corrupts(monkeypatch):
    monkeypatch.setattr(torch.cuda.Event, "synchronize", lambda self: None)
    sources, targets = _queued_copies(PinnedRing(), 3 * PinnedRing.SLOTS + 1)
    bad = sum(not torch.equal(d.cpu(), h) for h, d in zip(sources, targets, strict=True))
    assert bad > 0


def test_cpu_copies_are_plain():
    host = torch.arange(5, dtype=torch.int32)
    assert torch.equal(upload(host, torch.device("cpu")), host)
    dst = torch.zeros(5, dtype=torch.int32)
    assert copy_to_device(host, dst) is dst and torch.equal(dst, host)
