"""CUDA streams of our own, outside torch's stream pool, for work that must not share a stream
with anything else.

Why: cuBLAS GEMMs use a workspace that torch keeps per (handle, stream), and a captured graph
bakes in the workspace of the stream it was captured on. The decode step graphs and the prefill
graphs replay at the same time (an overlapped admission's prefill runs beside the steps), so they
must be captured on streams whose workspaces differ. `torch.cuda.Stream()` does not guarantee
that: it hands out the 32 streams of a pool in turn (shown on the H200), so once enough have been
taken (every warm-up and capture takes one) a "new" prefill capture stream can be the step graphs'
capture stream again; the two graph families would then share one workspace while they replay
side by side. A guard against a hazard in principle: profiling/probe_workspace_race.py found no
race at SmolLM2's GEMM shapes on the H200 (0 mismatches in 200 side-by-side replays of graphs
captured on one stream; shapes whose GEMMs take a workspace may differ). The `pld` corruption
these streams were first built for had another cause (kernels/load_rows.py, 2026-12-02).

`private_stream(device, role)`: one stream per (device, role) for the whole process, created with
the driver's cuStreamCreate (non-blocking, like torch's pooled streams) and wrapped as a
torch.cuda.ExternalStream, so no torch.cuda.Stream() call can return it. Roles: "step graphs" and
"prefill graphs" (captures), "collect reads" (the finished rows' reads beside the steps: a pooled
stream could be the one an admission's prefill replays on, and wait for it).
"""

from __future__ import annotations

import ctypes

import torch

_STREAMS: dict[tuple[int, str], torch.cuda.ExternalStream] = {}
_CU_STREAM_NON_BLOCKING = 1


def private_stream(device: torch.device | str, role: str) -> torch.cuda.ExternalStream:
    """The process's stream for `role` on CUDA `device` (e.g. "step graphs", "prefill
    graphs"): created on first use, never from torch's pool, never destroyed."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"private_stream: {device} is not a CUDA device")
    index = torch.cuda.current_device() if device.index is None else device.index
    key = (index, role)
    stream = _STREAMS.get(key)
    if stream is None:
        with torch.cuda.device(index):
            torch.cuda.current_stream().synchronize()  # (the device's context is current)
            handle = ctypes.c_void_p()
            err = _driver().cuStreamCreate(ctypes.byref(handle), _CU_STREAM_NON_BLOCKING)
            if err != 0:
                raise RuntimeError(f"cuStreamCreate failed with CUresult {err}")
            stream = _STREAMS[key] = torch.cuda.ExternalStream(handle.value, device=index)
    return stream


def _driver() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:  # (Windows)
        return ctypes.CDLL("nvcuda.dll")
