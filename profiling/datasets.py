"""Benchmark prompts: Spec-Bench (480, MT-Bench with both turns), HumanEval (164), HAGRID dev (716).

Each loader yields `BenchItem`s. Chat prompts carry their turns; the harness applies the chat
template and, for a second MT-Bench turn, puts the model's own first answer in the
conversation (Spec-Bench's protocol). HumanEval prompts are raw code completion (no chat template).

Categories follow the paper's table: MT (the eight MT-Bench categories), Trans, Summ, QA, Math, RAG.
"""

from __future__ import annotations

import gzip
import json
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass, field

DATA = pathlib.Path(__file__).resolve().parent / "data"

MT_BENCH_CATEGORIES = {
    "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
}  # fmt: skip
SPEC_BENCH_COLUMN = {
    "translation": "Trans",
    "summarization": "Summ",
    "qa": "QA",
    "math_reasoning": "Math",
    "rag": "RAG",
    **{c: "MT" for c in MT_BENCH_CATEGORIES},
}
TABLE_COLUMNS = ["MT", "Trans", "Summ", "QA", "Math", "RAG"]
DATASETS = ("spec_bench", "humaneval", "hagrid")


@dataclass
class BenchItem:
    item_id: str
    category: str  # table column (MT, Trans, ...; "code" for HumanEval, "RAG" for HAGRID)
    turns: list[str] = field(default_factory=list)  # user turns (chat) ...
    raw_prompt: str | None = None  # ... or a raw completion prompt (no chat template)


def spec_bench() -> Iterator[BenchItem]:
    with open(DATA / "spec_bench.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            yield BenchItem(
                item_id=f"spec_bench/{rec['question_id']}",
                category=SPEC_BENCH_COLUMN[rec["category"]],
                turns=list(rec["turns"]),
            )


def humaneval() -> Iterator[BenchItem]:
    with gzip.open(DATA / "HumanEval.jsonl.gz", "rt") as f:
        for line in f:
            rec = json.loads(line)
            yield BenchItem(item_id=rec["task_id"], category="Code", raw_prompt=rec["prompt"])


def hagrid_prompt(query: str, quotes: list[dict]) -> str:
    numbered = "\n".join(f"[{q['idx']}] {q['text']}" for q in quotes)
    return (
        "Answer the question using the numbered quotes below. Cite the quotes you use "
        "with their numbers in brackets, like [1].\n\n"
        f"Quotes:\n{numbered}\n\nQuestion: {query}"
    )


def hagrid() -> Iterator[BenchItem]:
    with gzip.open(DATA / "hagrid_dev.jsonl.gz", "rt") as f:
        for line in f:
            rec = json.loads(line)
            yield BenchItem(
                item_id=f"hagrid/{rec['query_id']}",
                category="RAG",
                turns=[hagrid_prompt(rec["query"], rec["quotes"])],
            )


def load(name: str, limit: int | None = None, per_category: bool = True) -> list[BenchItem]:
    """`limit` items in all; for Spec-Bench spread evenly over the six columns when per_category."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    items = list({"spec_bench": spec_bench, "humaneval": humaneval, "hagrid": hagrid}[name]())
    if limit is None or limit >= len(items):
        return items
    if name != "spec_bench" or not per_category:
        return items[:limit]
    by_col: dict[str, list[BenchItem]] = {}
    for it in items:
        by_col.setdefault(it.category, []).append(it)
    cols = [c for c in TABLE_COLUMNS if c in by_col]
    picked: list[BenchItem] = []
    i = 0
    while len(picked) < limit:
        col = by_col[cols[i % len(cols)]]
        j = i // len(cols)
        if j < len(col):
            picked.append(col[j])
        i += 1
    return picked


def all_prompt_texts() -> set[str]:
    """Every user-visible prompt text of the three benchmarks (for the corpus leak test)."""
    texts: set[str] = set()
    for name in DATASETS:
        for it in load(name):
            texts.update(it.turns)
            if it.raw_prompt:
                texts.add(it.raw_prompt)
    return texts
