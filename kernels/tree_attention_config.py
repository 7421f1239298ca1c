"""Launch configuration of the tree-attention kernel (kernels/tree_attention.py): the per-card
tuned table `kernels/tuned/tree_attention.json` (written by profiling/bench_attention.py
--write-tuning from its graph-timed sweep; keyed by heads and bucketed N and B) and the heuristic
for geometries it lacks."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

BLOCK_N: int = 64  # keys per inner iteration (default)
MAX_SPLITS: int = 64  # split-KV chunks per (row block, kv head, sequence)
NODE_BUCKETS: tuple[int, ...] = (1, 4, 16, 81)
BATCH_BUCKETS: tuple[int, ...] = (1, 16, 64, 256)
# Untuned geometries' row block: the sweeps chose 64 rows for every tree of 16+ nodes on the H200.
# All of a kv head's rows in one block (256 for SmolLM2's 81-node tree) reads the prefix once, but
# took 18-20 us a layer at B=1, context 1,024, against 11.6-12 us in 64-row blocks
# (profiling/results/20261201-h200-b1-tree-tuning-08baa5a.jsonl).
HEURISTIC_BLOCK_M: int = 64
TUNING_FILE = Path(__file__).resolve().parent / "tuned" / "tree_attention.json"


def tuning_key(hq: int, hkv: int, d: int, n_bucket: int, b_bucket: int) -> str:
    return f"{hq},{hkv},{d},{n_bucket},{b_bucket}"


def table_key(b: int, n: int, hq: int, hkv: int, d: int) -> str:
    """The tuning-table entry a call of B sequences of N nodes reads: the nearest buckets."""
    return tuning_key(hq, hkv, d, _nearest(n, NODE_BUCKETS), _nearest(b, BATCH_BUCKETS))


@functools.cache
def tuned_configs(card: str) -> dict[str, tuple[int, int, int, int, int]]:
    """`card`'s entries of the tuning file: "Hq,Hkv,D,node bucket,batch bucket" -> (block_m,
    block_n, num_splits, num_warps, num_stages), the best of profiling/bench_attention.py's sweep
    on that card; a geometry missing there takes `_heuristic_config`."""
    if not TUNING_FILE.is_file():
        return {}
    table = json.loads(TUNING_FILE.read_text()).get(card, {})
    return {key: tuple(cfg) for key, cfg in table.items()}


def untuned_note(card: str, hq: int, hkv: int, d: int) -> str | None:
    """A one-line note when `card`'s table has nothing for these heads (every call then takes the
    heuristic), else None."""
    if any(key.startswith(f"{hq},{hkv},{d},") for key in tuned_configs(card)):
        return None
    return (
        f"samgpu: the tree attention has no tuned configurations for {card} with {hq} q / {hkv} kv "
        f"heads of {d}, so it runs a heuristic one; in a samgpu checkout `python -m "
        f"profiling.bench_attention --sections tree --heads {hq},{hkv},{d} --write-tuning` tunes it"
    )


def max_block_m(head_dim: int) -> int:
    """Largest row block the kernel is compiled and swept for: 256 rows (SmolLM2's 81-node tree,
    3 heads per kv head) fit the registers of 8 warps at D=64; 128 at D=128."""
    return 256 if head_dim <= 64 else 128


@dataclass(frozen=True)
class TreeAttentionConfig:
    block_m: int  # rows (q head of the group x node) per program, power of two >= 16
    block_n: int  # keys per iteration, power of two >= 16
    num_splits: int  # split-KV chunks, 1..MAX_SPLITS
    num_warps: int
    num_stages: int


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _nearest(value: int, buckets: tuple[int, ...]) -> int:
    return min(buckets, key=lambda x: abs(math.log(max(value, 1) / x)))


def _heuristic_config(
    b: int, n: int, hq: int, hkv: int, d: int, max_len: int, device: torch.device
) -> TreeAttentionConfig:
    """Row blocks of up to HEURISTIC_BLOCK_M rows; split the prefix until ~4 programs per SM are
    in flight (memory-latency hiding), each split keeping >= 2 key blocks of the cache capacity."""
    rows = (hq // hkv) * n
    block_m = min(max(16, triton.next_power_of_2(rows)), HEURISTIC_BLOCK_M)
    num_warps = 4
    num_splits = 1
    if device.type == "cuda":
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        programs = b * hkv * triton.cdiv(rows, block_m)
        cap = max(1, max_len // (2 * BLOCK_N))
        num_splits = max(1, min(MAX_SPLITS, triton.cdiv(4 * sms, programs), cap))
    return TreeAttentionConfig(block_m, BLOCK_N, num_splits, num_warps, 3)


def default_config(
    b: int, n: int, hq: int, hkv: int, d: int, max_len: int, device: torch.device
) -> TreeAttentionConfig:
    """The tuned configuration of the nearest (N, B) bucket for these heads, else the heuristic.
    Off CUDA (the interpreter) always the heuristic, unsplit."""
    if device.type == "cuda":
        tuned = tuned_configs(torch.cuda.get_device_name(device)).get(table_key(b, n, hq, hkv, d))
        if tuned is not None:
            return TreeAttentionConfig(*tuned)
    return _heuristic_config(b, n, hq, hkv, d, max_len, device)


def resolve_config(
    overrides: tuple, b: int, n: int, hq: int, hkv: int, d: int, max_len: int, device
) -> TreeAttentionConfig:
    """`default_config` with the caller's (block_m, block_n, num_splits, num_warps, num_stages)
    overrides where not None, block_m capped at the rows' next power of two (padding past it only
    costs); a ValueError for a block that is not a power of two >= 16 or splits outside
    1..MAX_SPLITS."""
    cfg = default_config(b, n, hq, hkv, d, max_len, device)
    values = [
        default if value is None else value
        for value, default in zip(overrides, dataclasses.astuple(cfg), strict=True)
    ]
    values[0] = min(values[0], max(16, triton.next_power_of_2((hq // hkv) * n)))
    for name, value in (("block_m", values[0]), ("block_n", values[1])):
        if value < 16 or value & (value - 1):
            raise ValueError(f"tree_attention: {name}={value} is not a power of two >= 16")
    if not 1 <= values[2] <= MAX_SPLITS:
        raise ValueError(f"tree_attention: num_splits={values[2]} outside 1..{MAX_SPLITS}")
    return TreeAttentionConfig(*values)
