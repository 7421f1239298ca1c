"""How the CLI speaks: one line per message on stderr, `samgpu: error: ...` /
`samgpu: warning: ...`, prefixed with the rank under torchrun (other than rank 0)."""

from __future__ import annotations

import os
import sys


def _prefix() -> str:
    rank = os.environ.get("RANK")
    return f"[rank {rank}] " if rank not in (None, "0") else ""


def error(msg: str) -> None:
    print(f"samgpu: error: {_prefix()}{msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"samgpu: warning: {msg}", file=sys.stderr, flush=True)
