"""profiling/store_occurrence.py: the occurrence rules on a hand-made store."""

import gzip

import pytest

from profiling.store_occurrence import RULES, Store, accepted_by, frequent_chain, main, replay


def make_store() -> Store:
    store = Store(k=2)
    store.append([1, 2, 3, 7, 7])  # ends: "1 2" at 1
    store.append([1, 2, 4, 8])  # "1 2" at 7
    store.append([1, 2, 4, 9])  # "1 2" at 12
    return store


def test_match_finds_longest_suffix_and_all_its_ends():
    store = make_store()
    assert store.match([5, 1, 2]) == (2, [1, 7, 12])
    assert store.match([2, 4]) == (2, [8, 13])
    assert store.match([1, 2, 4]) == (3, [8, 13])  # one longer: only the two "1 2 4"
    assert store.match([6, 6]) == (0, [])
    assert store.after(1, 10) == [3, 7, 7]  # cut at the response's end (SEP)


def test_rules_pick_different_occurrences():
    store = make_store()
    _, ends = store.match([1, 2])
    truth = [4, 9, 0]
    assert accepted_by("earliest", store, ends, 3, truth) == 0  # drafts 3 7 7
    assert accepted_by("latest", store, ends, 3, truth) == 2  # drafts 4 9
    assert frequent_chain(store, ends, 3) == [4, 9]  # 4 twice; then 8 / 9 tie: the latest
    assert accepted_by("frequent", store, ends, 3, truth) == 2
    assert accepted_by("oracle", store, ends, 3, [3, 7, 7]) == 3
    assert accepted_by("latest", store, ends, 3, [3, 7, 7]) == 0


def test_replay_counts_steps_per_rule():
    # the second request repeats the first: every rule drafts it from the store once matched
    recs = [{"prompt": [1, 2], "output": [3, 4, 5, 6, 7, 8]}] * 2
    rows = replay(recs, min_match=2)
    (row,) = rows
    assert row["requests"] == 2
    # first request: 6 steps of one token; second (the store holds outputs, not prompts): one
    # token each at t = 0, 1, then "3 4" matched and 5 6 7 8 accepted with the step's own token
    for rule in RULES:
        assert row[rule] == 12 / 9, rule


def test_bad_arguments_are_refused_without_output(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMGPU_RESULTS_DIR", str(tmp_path / "results"))
    with pytest.raises(SystemExit, match="--limit must be >= 1"):
        main(["--limit", "0"])
    empty = tmp_path / "empty.jsonl.gz"
    with gzip.open(empty, "wt"):
        pass
    with pytest.raises(SystemExit, match="no records in"):
        main(["--outputs", str(empty)])
    with pytest.raises(SystemExit, match="no recorded outputs"):
        main(["--outputs", str(tmp_path / "missing.jsonl.gz")])
    assert not (tmp_path / "results").exists()  # nothing written for a refused run
