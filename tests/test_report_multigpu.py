"""profiling.report's multi-GPU table from bench_multigpu records: one table per setting, a row per
method, the N-vs-1 ratio, the busy share from the per-rank generate seconds, same-text counts."""

from profiling.report import multigpu_tables


def record(method, gpus, tok_s, ratio, busy=None, passes=2, same=10, same_ar=10):
    stats = {"mean_accepted_tokens": 2.5 if method != "ar" else 1.0, "generate_seconds": 2.0}
    if busy is not None:
        stats["rank_generate_seconds"] = busy
    return {
        "bench": "multigpu",
        "provider": method,
        "params": {"gpus": gpus, "batch_size": 16, "max_new_tokens": 64, "dtype": "bfloat16",
                   "prompts": 10, "tag": "t"},
        "tok_s": tok_s,
        "speedup_vs_1gpu": ratio,
        "cli_stats": stats,
        "passes": passes,
        "same_text_as_1gpu": same,
        "same_text_as_ar": same_ar,
        "num_records": 10,
        "env": {"samgpu_sha": "abc", "gpu": "NVIDIA H200"},
    }  # fmt: skip


def test_multigpu_table_rows_ratio_busy_and_settings():
    recs = [
        record("ar", 1, 1000.0, 1.0),
        record("ar", 2, 1800.0, 1.8, busy=[1.8, 1.6]),
        record("merged", 1, 1500.0, 1.0, same_ar=7),
        record("merged", 2, 2400.0, 1.6, busy=[2.0, 2.0], same=9, same_ar=6),
        record("ar", 1, 500.0, 1.0, passes=1),  # another setting: a second table
    ]
    first, second = multigpu_tables(recs)
    assert "B=16 per GPU" in first and "pass 2 of each command" in first
    rows = {line.split(" | ")[0]: line for line in first.splitlines() if line.startswith("| ")}
    assert rows["| ar"].split(" | ")[1:6] == ["1,000", "1,800", "1.80x", "1.00", "85"]
    assert rows["| merged"].split(" | ")[1:] == ["1,500", "2,400", "1.60x", "2.50", "100", "9/10",
                                                 "6/10 |"]  # fmt: skip
    assert "one pass (includes Triton compilation" in second and "| ar | 500 | 1.00x" in second
