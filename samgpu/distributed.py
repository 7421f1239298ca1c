"""Multi-GPU batched generation with torchrun (DESIGN.md §10): no home-made cluster code.

`torchrun --nproc-per-node N -m samgpu generate --input in.jsonl --output out.jsonl` starts N copies
of the CLI. Each reads the whole input and builds its own model and static index (the index is
replicated per GPU: it is read-only and small next to the model), then takes the pending records
round-robin by rank. Work proceeds in rounds: in round t every rank generates its t-th batch
(possibly empty, so that every rank joins every collective), then the results are gathered on rank
0, which alone writes the partial and final output files in input order (samgpu.io).

Backend: NCCL on CUDA (device cuda:LOCAL_RANK), gloo on CPU. Objects travel with
`gather_object`/`broadcast_object_list`, which pickle; the payload is text and a few numbers per
record, small next to a generation round.

Example: 5 pending records [0, 1, 2, 4, 6], world size 2, batch size 2 -> rank 0 gets [0, 2, 6],
rank 1 gets [1, 4]; rounds: ([0, 2] | [1, 4]), ([6] | []). Rank 0 writes 0, 1, 2, 4 after round 1
and 6 after round 2.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> DistInfo:
    """Join the process group torchrun set up (env://), or return a single-process DistInfo.
    `device_type` is "cuda" or "cpu": NCCL on CUDA, gloo on CPU."""
    if not launched_by_torchrun():
        return DistInfo()
    import torch.distributed as dist

    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"timeout": datetime.timedelta(hours=2)}
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
            kwargs["device_id"] = torch.device("cuda", info.local_rank)
        dist.init_process_group(backend=backend, **kwargs)
    return info


def shutdown(together: bool = True) -> None:
    """Leave the process group; `together` (every rank gets here): after a barrier, since a rank
    tearing gloo down while its peer still used it aborted once in a CPU suite run ("terminate
    called without an active exception"). Not on an error path, where a peer may never come."""
    if launched_by_torchrun():
        import torch.distributed as dist

        if dist.is_initialized():
            if together:
                dist.barrier()
            dist.destroy_process_group()


def shard(items: list[T], info: DistInfo) -> list[T]:
    """Round-robin: rank r takes items r, r + W, r + 2W, ... (balances prompt lengths better than
    contiguous blocks when the input is sorted by task)."""
    return items[info.rank :: info.world_size]


def num_rounds(num_items: int, batch_size: int, info: DistInfo) -> int:
    """Rounds every rank must join: batches of the largest shard."""
    largest = -(-num_items // info.world_size)
    return -(-largest // batch_size)


def broadcast(obj: T, info: DistInfo) -> T:
    """Rank 0's `obj` on every rank."""
    if not info.is_distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: T, info: DistInfo) -> list[T] | None:
    """Every rank's `obj`, in rank order, on rank 0; None elsewhere."""
    if not info.is_distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_ok(ok: bool, info: DistInfo) -> bool:
    """True when every rank passed `ok` (lets all ranks stop together after a set-up error)."""
    if not info.is_distributed:
        return ok
    import torch.distributed as dist

    flags: list[Any] = [None] * info.world_size
    dist.all_gather_object(flags, bool(ok))
    return all(flags)
