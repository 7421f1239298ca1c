"""Which earlier occurrence should a store chain continue? An offline study on recorded outputs.

    python -m profiling.store_occurrence [--limit N] [--min-match K] \
        [--outputs profiling/results/20261130-h200-store-outputs-ar-B64-a.jsonl.gz]

The cross-request store (issue 16) drafts, like the official SAM-Decoding, from the earliest end
position of its longest match. SuffixDecoding instead follows the most frequent continuation. This
replays `ar`'s recorded greedy outputs of stream (a) (bench_store --save-outputs) through a
store-only chain drafter in plain Python: requests in stream order, each response appended to the
store after it ends (SEP between responses), the longest suffix of prompt + output so far found in
the store (at least --min-match tokens, at most 64), a chain of min(59, 4 x match) tokens as
`sam` sizes it, accepted while it equals the recording. Rules for the chain:
- earliest: the match's first occurrence (what kernels/sam_draft.py does);
- latest: its most recent occurrence;
- frequent: token by token the continuation most occurrences share (ties: the most recent);
- oracle: the occurrence whose continuation the recording accepts furthest (an upper bound on any
  rule that picks one occurrence).
Output: tokens per step (MAT of store-only drafting) per rule, overall and per 200 requests; a
table on stdout, records in profiling/results (bench "store_occurrence"). CPU, a few minutes.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path

from profiling.common import print_table, write_jsonl

OUTPUTS = Path(__file__).parent / "results" / "20261130-h200-store-outputs-ar-B64-a.jsonl.gz"
SEP = -1
MAX_MATCH = 64
RULES = ("earliest", "latest", "frequent", "oracle")


class Store:
    """Responses joined by SEP, with an index of every k-gram's end positions."""

    def __init__(self, k: int):
        self.k, self.text, self.index = k, [], defaultdict(list)

    def append(self, tokens: list[int]) -> None:
        for tok in [*tokens, SEP]:
            self.text.append(tok)
            end = len(self.text) - 1
            gram = tuple(self.text[end - self.k + 1 : end + 1])
            if len(gram) == self.k and SEP not in gram:
                self.index[gram].append(end)

    def match(self, context: list[int]) -> tuple[int, list[int]]:
        """Longest suffix of `context` in the store (>= k tokens) and its end positions."""
        ends = list(self.index.get(tuple(context[-self.k :]), ())) if len(context) >= self.k else []
        if not ends:
            return 0, []
        m = self.k
        while m < min(MAX_MATCH, len(context)):
            longer = [e for e in ends if e - m >= 0 and self.text[e - m] == context[-m - 1]]
            if not longer:
                break
            ends, m = longer, m + 1
        return m, ends

    def after(self, end: int, n: int) -> list[int]:
        """Up to n tokens after position `end`, cut at the response's end."""
        out = []
        for tok in self.text[end + 1 : end + 1 + n]:
            if tok == SEP:
                break
            out.append(tok)
        return out


def accepted(draft: list[int], truth: list[int]) -> int:
    a = 0
    while a < len(draft) and a < len(truth) and draft[a] == truth[a]:
        a += 1
    return a


def frequent_chain(store: Store, ends: list[int], n: int) -> list[int]:
    out, live = [], ends
    for d in range(1, n + 1):
        nxt = [(store.text[e + d], e) for e in live if e + d < len(store.text)]
        nxt = [(t, e) for t, e in nxt if t != SEP]
        if not nxt:
            break
        counts, last = Counter(t for t, _ in nxt), {}
        for t, e in nxt:
            last[t] = max(last.get(t, -1), e)
        tok = max(counts, key=lambda t: (counts[t], last[t]))
        out.append(tok)
        live = [e for t, e in nxt if t == tok]
    return out


def accepted_by(rule: str, store: Store, ends: list[int], n: int, truth: list[int]) -> int:
    if rule == "earliest":
        return accepted(store.after(min(ends), n), truth)
    if rule == "latest":
        return accepted(store.after(max(ends), n), truth)
    if rule == "frequent":
        return accepted(frequent_chain(store, ends, n), truth)
    return max(accepted(store.after(e, n), truth) for e in ends)  # oracle


def replay(records: list[dict], min_match: int) -> list[dict]:
    """Per rule and block of 200 requests: generated tokens and steps."""
    store = Store(min_match)
    totals = {rule: [0, 0] for rule in RULES}
    rows = []
    for i, rec in enumerate(records):
        prompt, output = rec["prompt"], rec["output"]
        for rule in RULES:
            t = steps = 0
            while t < len(output):
                m, ends = store.match(prompt + output[:t])
                n = min(59, 4 * m)
                a = accepted_by(rule, store, ends, n, output[t:]) if m else 0
                t, steps = t + a + 1, steps + 1
            totals[rule][0] += len(output)
            totals[rule][1] += steps
        store.append(output)
        if (i + 1) % 200 == 0 or i + 1 == len(records):
            row = {"requests": i + 1}
            row.update({rule: tok / st for rule, (tok, st) in totals.items()})
            rows.append(row)
            print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outputs", type=Path, default=OUTPUTS)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--min-match", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.outputs.is_file():
        raise SystemExit(f"store_occurrence: no recorded outputs at {args.outputs}")
    if args.min_match < 1:
        raise SystemExit("store_occurrence: --min-match must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise SystemExit("store_occurrence: --limit must be >= 1")
    with gzip.open(args.outputs, "rt") as f:
        records = [json.loads(line) for line in f][: args.limit]
    if not records:
        raise SystemExit(f"store_occurrence: no records in {args.outputs}")
    rows = replay(records, args.min_match)
    print_table(rows, ["requests", *RULES], title="store-only MAT by occurrence rule")
    params = {"outputs": args.outputs.name, "min_match": args.min_match, "max_match": MAX_MATCH}
    final = rows[-1]
    recs = [
        {
            "bench": "store_occurrence",
            "rule": rule,
            "MAT": final[rule],
            "requests": final["requests"],
            "params": params,
        }
        for rule in RULES
    ]
    print(f"results: {write_jsonl(recs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
