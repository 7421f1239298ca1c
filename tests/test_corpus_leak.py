"""The static corpus must not contain the benchmarks: no Spec-Bench, HumanEval or HAGRID prompt
(and so no answer keyed to one) appears in any shipped corpus file, the model's own responses
included."""

import pytest

from profiling import datasets
from samgpu.sam.corpus import DEFAULT_FIELDS, read_texts
from samgpu.sam.default import default_corpus_paths


def normalise(text: str) -> str:
    return " ".join(text.split()).lower()


SELF_RESPONSES = "smollm2_self_responses.jsonl.gz"  # shipped beside the default corpus
EAGLE_PROMPTS = "eagle_prompts.jsonl.gz"  # the EAGLE head's extra training prompts


@pytest.fixture(scope="module")
def corpus_records() -> list[str]:
    paths = default_corpus_paths()
    paths += [paths[0].parent / SELF_RESPONSES, paths[0].parent / EAGLE_PROMPTS]
    assert all(p.is_file() for p in paths)
    return [normalise(t) for t in read_texts(paths, DEFAULT_FIELDS)]


def benchmark_prompts() -> list[str]:
    prompts = []
    for name in datasets.DATASETS:
        for item in datasets.load(name):
            prompts += item.turns if item.raw_prompt is None else [item.raw_prompt]
    return [normalise(p) for p in prompts]


def test_benchmarks_are_loaded():
    assert len(benchmark_prompts()) == 80 * 2 + 400 + 164 + 716


def find_leaks(records: list[str], prompts: list[str]) -> list[str]:
    """Prompts equal to a record, and long prompts whose first 80 characters occur in one."""
    exact = set(records)
    joined = "\n".join(records)
    return [p for p in prompts if p in exact or (len(p) >= 80 and p[:80] in joined)]


def test_no_benchmark_prompt_in_the_corpus(corpus_records):
    assert find_leaks(corpus_records, benchmark_prompts()) == []


def test_the_check_finds_planted_leaks(corpus_records):
    """Negative control: a long prompt inside a record and a short one as a record are found."""
    prompts = benchmark_prompts()
    long_prompt = next(p for p in prompts if len(p) > 200)
    short_prompt = next(p for p in prompts if len(p) < 60)
    records = [*corpus_records[:100], "prefix " + long_prompt + " suffix", short_prompt]
    assert find_leaks(records, [long_prompt, short_prompt, "not in the corpus"]) == [
        long_prompt,
        short_prompt,
    ]
