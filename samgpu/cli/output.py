"""How the CLI speaks: one line per message on stderr, `samgpu: error: ...` /
`samgpu: warning: ...`, prefixed with the rank under torchrun (other than rank 0). The library's
own warnings (`warnings.warn("samgpu: ...")`) come out the same way while
`library_warnings_as_lines` is on, instead of Python's two-line `path:line: UserWarning: ...`
form; others keep that form."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings


def _prefix() -> str:
    rank = os.environ.get("RANK")
    return f"[rank {rank}] " if rank not in (None, "0") else ""


def error(msg: str) -> None:
    print(f"samgpu: error: {_prefix()}{msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"samgpu: warning: {_prefix()}{msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def library_warnings_as_lines():
    """samgpu's warnings as `samgpu: warning: ...` lines for the duration (module doc)."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text.startswith("samgpu: "):
            warn(text.removeprefix("samgpu: "))
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
