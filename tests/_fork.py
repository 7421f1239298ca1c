"""Crash-prone cases in a forked child with a timeout: a segfault or an endless loop cannot take
the test process down, and a fork starts in milliseconds (a fresh interpreter spends seconds
importing torch). The child only runs numpy / numba code and leaves with os._exit."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

HANG = "hang"


def in_child(fn: Callable[[], object], *, timeout: float) -> tuple[int | str, str]:
    """Run fn() in a forked child: (status, text). status is 0 if fn returned (text = str of its
    value), 1 if it raised (text = "ExcType: message"), -N if signal N killed the child, or HANG
    if it ran past `timeout` seconds (it is then killed). Keep `text` short (one pipe buffer)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller
        code = 0
        try:
            os.close(read_end)
            text = str(fn())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as text
            text, code = f"{type(exc).__name__}: {exc}", 1
        try:
            os.write(write_end, text.encode()[:60_000])
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    status: int | str
    while True:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = HANG
            break
        time.sleep(0.005)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    return status, b"".join(chunks).decode(errors="replace")
