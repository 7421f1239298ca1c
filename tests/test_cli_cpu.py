"""CPU thread settings of the command line (issue 14, item 10). No timings here: the numbers are
profiling/bench_cpu.py's; these check that the settings are made, and made only where they may."""

import argparse
import os
import subprocess
import sys

import pytest
import torch

from samgpu.cli.generate import configure_threads
from tests.api import fixtures

tiny_model_dir = fixtures.tiny_model_dir


def omp_policy(code: str, **env) -> str:
    full = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_passive_openmp_waits_unless_the_user_chose():
    """Set before torch loads (a busy-waiting thread on a shared 2-core machine made every op
    10-50x slower); a user's OMP_WAIT_POLICY wins; once torch is loaded it is left alone (too
    late to matter, and not ours to change)."""
    show = "import os; from samgpu import cli; cli.cpu_threading_defaults();"
    show += " print(os.environ.get('OMP_WAIT_POLICY'))"
    assert omp_policy(show) == "PASSIVE"
    assert omp_policy(show, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    assert omp_policy("import torch; " + show) == "None"


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_threads_flag_and_torchrun_share(monkeypatch, restore_threads):
    class Info:
        is_distributed = True

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert configure_threads(1) == 1
    torch.set_num_threads(restore_threads)
    # a torchrun group of 2 on this host: each process takes its share of the cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert configure_threads(None, Info()) == max(1, restore_threads // 2)
    torch.set_num_threads(restore_threads)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's setting: left as torch read it
    assert configure_threads(None, Info()) == restore_threads


def test_default_method_is_ar_on_cpu(capsys, tiny_model_dir):
    """No --method on a CPU: `ar` (the drafting methods measured slower there), said in the
    statistics line; the API follows the same rule."""
    from samgpu import cli
    from samgpu.api import SamDecoder, default_method
    from samgpu.resolve import load_model

    argv = ["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--raw",
            "--max-new-tokens", "2", "--prompt", "Hi"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "method ar, cpu" in capsys.readouterr().err
    model, tok = load_model(str(tiny_model_dir), torch.device("cpu"), torch.float32)
    assert SamDecoder(model, tok).method == "ar"
    assert default_method("cpu") == "ar" and default_method("cpu", 64) == "ar"
    assert default_method("cpu", store=True) == "merged"  # a store needs an automaton method


def test_default_method_on_cuda_follows_the_batch_size(monkeypatch):
    """On CUDA: `merged` for one sequence, below 4 at a time and with a store, `pld` from 4
    (the measured best, samgpu.resolve); the CLI decides by --prompt / --batch-size / --store."""
    import argparse

    from samgpu import api
    from samgpu.cli.generate import run_device
    from samgpu.resolve import default_method

    assert [default_method("cuda", b) for b in (1, 3, 4, 256)] == ["merged"] * 2 + ["pld"] * 2
    assert default_method("cuda", 64, store=True) == "merged"
    monkeypatch.setattr(api, "resolve_device", lambda device: torch.device("cuda"))

    def chosen(**kw):
        args = dict(device="cuda", method=None, prompt=None, batch_size=8, store=None)
        args = argparse.Namespace(**(args | kw))
        run_device(args)
        return args.method, args.method_is_default

    assert chosen() == ("pld", True)
    assert chosen(prompt="Hi") == ("merged", True)
    assert chosen(batch_size=2) == ("merged", True)
    assert chosen(store="s.samstore") == ("merged", True)
    args = argparse.Namespace(device="cuda", method="sam", prompt=None, batch_size=8, store=None)
    run_device(args)
    assert args.method == "sam" and not hasattr(args, "method_is_default")


def test_an_option_of_another_method_names_the_default(capsys, tiny_model_dir):
    """-O without --method is checked against the default method, and the error says which."""
    from samgpu import cli

    argv = ["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--raw",
            "--max-new-tokens", "2", "--prompt", "Hi", "-O", "l_threshold=5"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "l_threshold" in err and "no --method given: ar is the default here" in err


def test_decode_threads_adapt_only_when_the_cli_chose_them(
    monkeypatch, tmp_path, restore_threads, tiny_model_dir
):
    """Without --threads and OMP_NUM_THREADS the CLI lets decode steps try one thread
    (GenerationConfig.adaptive_threads; the third window of a 2-thread run is one), and the stats
    count those steps; a thread count the user gave is kept for every step."""
    import json

    from samgpu import cli
    from samgpu.cli.generate import threads_are_ours

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "Hi"}\n')

    def single_thread_steps(*extra: str) -> int:
        stats = tmp_path / "stats.json"
        argv = ["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--raw",
                "--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--overwrite",
                "--no-progress", "--max-new-tokens", "6", "--stats-json", str(stats),
                *extra]  # fmt: skip
        assert cli.main(argv) == 0
        assert torch.get_num_threads() == 2  # given back after the run
        return json.loads(stats.read_text())["single_thread_steps"]

    torch.set_num_threads(2)
    assert threads_are_ours(argparse.Namespace(threads=None))
    assert single_thread_steps() >= 1
    assert single_thread_steps("--threads", "2") == 0
    assert not threads_are_ours(argparse.Namespace(threads=2))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not threads_are_ours(argparse.Namespace(threads=None))
