"""samgpu.decoding.streams: capture streams outside torch's stream pool (why: the module doc).
On CUDA: a private stream is none of the streams torch.cuda.Stream() hands out, however many are
taken (negative control: the pool's own streams repeat), and graphs captured on it replay right."""

from __future__ import annotations

import pytest
import torch

from samgpu.decoding.streams import private_stream

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_a_private_stream_needs_a_cuda_device():
    with pytest.raises(ValueError, match="not a CUDA device"):
        private_stream("cpu", "step graphs")


@cuda
def test_no_pooled_stream_is_a_private_stream():
    mine = {private_stream("cuda", role).cuda_stream for role in ("step graphs", "prefill graphs")}
    assert len(mine) == 2 and private_stream("cuda", "step graphs").cuda_stream in mine  # cached
    pooled = [torch.cuda.Stream().cuda_stream for _ in range(100)]
    assert not mine & set(pooled)
    assert len(set(pooled)) < len(pooled)  # the control: torch's pool repeats its streams


@cuda
def test_a_graph_captured_on_a_private_stream_replays():
    a = torch.randn(64, 576, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1728, 576, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(64, 1728, device="cuda", dtype=torch.bfloat16)
    torch.mm(a, w.t(), out=out)  # (warm-up outside the capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=private_stream("cuda", "step graphs")):
        torch.mm(a, w.t(), out=out)
    a.copy_(torch.randn_like(a))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, torch.mm(a, w.t()))
