"""What the CLI says about itself (issue 14, "smaller"): --help lists the methods and every
option's default, `index stats` has help, `samgpu bench` writes where it runs (not into the
source checkout), and the progress display suits where stderr goes."""

import re

import pytest

from samgpu import cli
from samgpu.cli import bench
from samgpu.drafters import method_names
from tests.api import fixtures

tiny_model_dir = fixtures.tiny_model_dir
prompts_file = fixtures.prompts_file


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def option_entries(text: str) -> dict[str, str]:
    """'--name' -> its help entry (continuation lines joined), for options taking a value."""
    entries, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (?:-\w, )?(--[\w-]+) ([A-Z{][^ ]*)", line)
        if m:
            current = m.group(1)
            entries[current] = line
        elif re.match(r"^  -", line) or not line.startswith("   "):
            current = None
        elif current:
            entries[current] += " " + line.strip()
    return entries


def test_generate_help_lists_methods_and_every_default(capsys):
    text = help_text(capsys, "generate")
    assert "{" + ",".join(method_names()) + "}" in text
    for name in method_names():  # each method with its summary and options below
        assert re.search(rf"^  {re.escape(name)} ", text, re.M), name
    entries = option_entries(text)
    assert {"--method", "--batch-size", "--top-p", "--device", "--threads"} <= set(entries)
    missing = [o for o, e in entries.items() if "default" not in e and "(none:" not in e]
    assert missing == []
    assert "exit status" in text and "--allow-skips" in text


def test_index_stats_help(capsys):
    text = help_text(capsys, "index", "stats")
    assert "PATH" in text and ".samidx" in text and "deep structural" in text


def test_bench_writes_results_where_it_runs(monkeypatch, tmp_path):
    """The benchmark child gets SAMGPU_RESULTS_DIR: the current folder, or --out (which it does
    not see itself); it used to append to profiling/results in the checkout."""
    seen = []

    class Done:
        returncode = 0

    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, env: seen.append((cmd, env)) or Done)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--limit", "2"]) == 0
    assert cli.main(["bench", "--out", str(tmp_path / "res"), "--limit", "2"]) == 0
    (cmd1, env1), (cmd2, env2) = seen
    assert env1["SAMGPU_RESULTS_DIR"] == str(tmp_path)
    assert env2["SAMGPU_RESULTS_DIR"] == str(tmp_path / "res")
    assert cmd2[-2:] == ["--limit", "2"] and "--out" not in cmd2


def test_results_path_honours_the_results_dir(monkeypatch, tmp_path):
    from profiling.common import results_path

    monkeypatch.setenv("SAMGPU_RESULTS_DIR", str(tmp_path))
    assert results_path().parent == tmp_path


def test_progress_to_a_file_is_plain_lines_with_mat_at_least_one(
    capsys, monkeypatch, tmp_path, tiny_model_dir, prompts_file
):
    """stderr that is not a terminal gets plain progress lines (no tqdm carriage-return redraws
    repeated in the log) and the summary once; the live MAT never drops below 1."""
    from samgpu.cli.progress import Progress

    monkeypatch.setattr(Progress, "LOG_EVERY_S", 0.0)
    src = prompts_file([{"prompt": f"Count to {i}." * (1 + i % 3)} for i in range(6)])
    argv = ["generate", "--model", str(tiny_model_dir), "--method", "pld", "--device", "cpu",
            "--max-new-tokens", "12", "--batch-size", "4", "--check-every", "2",
            "--input", str(src), "--output", str(tmp_path / "o.jsonl")]  # fmt: skip
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [x for x in err.splitlines() if re.match(r"samgpu: \d+/6 records", x)]
    assert lines, err
    mats = [float(m) for m in re.findall(r"MAT ([\d.]+)", err)]
    assert mats and min(mats) >= 1.0
    assert err.count("samgpu: wrote") == 1
    assert re.search(r"samgpu: wrote .*; method pld\)", err)  # the summary names the method
