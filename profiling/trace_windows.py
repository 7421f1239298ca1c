"""Adaptive speculation, window by window: bench_serve (the CLI path) with every window the
policy measured written as one JSON line (mode, steps, tokens, seconds, clean, live requests,
the policy's averages after it), to see what it compared and why it chose what it did.

    DIAG_LOG=windows.jsonl python -m profiling.trace_windows [bench_serve options]
    DIAG_FORCE=plain ...   every window plain (the method's all-plain rate, for comparison)

Lines of one run share `pid` (one policy per run). Behind the 2026-12-02 fix of the policy
(docs/BATCHED-RUNS.md): results/logs/20261202-policy-windows-*.jsonl.
"""

from __future__ import annotations

import json
import os
import sys

import samgpu.decoding.adaptive as adaptive

_record, _choose = adaptive.SpeculationPolicy.record, adaptive.SpeculationPolicy.choose


def _forced_choose(self):
    if os.environ.get("DIAG_FORCE") == "plain" and self.enabled:
        return False
    return _choose(self)


def _logged_record(self, speculate, steps, tokens, seconds, clean, live=1):
    probe = self._probe
    _record(self, speculate, steps, tokens, seconds, clean, live)
    line = dict(pid=id(self), s=speculate, n=steps, t=tokens, sec=seconds, c=clean, live=live)
    line.update(probe=probe, rates={str(k): v for k, v in self.rates.items()})
    with open(os.environ["DIAG_LOG"], "a") as f:
        f.write(json.dumps(line) + "\n")


def main(argv: list[str] | None = None) -> int:
    if "DIAG_LOG" not in os.environ:
        raise SystemExit("trace_windows: set DIAG_LOG to the file the windows go to")
    adaptive.SpeculationPolicy.choose = _forced_choose
    adaptive.SpeculationPolicy.record = _logged_record
    from profiling.bench_serve import main as bench_serve

    return bench_serve(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
