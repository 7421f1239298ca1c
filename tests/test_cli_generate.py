"""`samgpu generate` end to end: streamed single prompt on the real default model (greedy output
identical across methods: lossless), batched JSONL with resume after an interruption, the profiler
trace, and torchrun with two CPU processes (gloo) merging shards in input order."""

import json
import os
import subprocess
import sys
from pathlib import Path

from samgpu import cli
from samgpu.cli import generate as cli_generate
from tests.api import fixtures

tiny_model_dir = fixtures.tiny_model_dir
prompts_file = fixtures.prompts_file

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    {"id": "a", "prompt": "Hello there"},
    {"id": "b", "messages": [{"role": "user", "content": "What is 2 + 2?"}]},
    {"id": "c", "text": "Once upon a time"},
    {"id": "d", "prompt": "def fib(n):"},
    {"id": "e", "prompt": "Paris is"},
]


def tiny_args(model_dir, *extra):
    return [
        "generate",
        "--model",
        str(model_dir),
        "--method",
        "ar",
        "--device",
        "cpu",
        "--max-new-tokens",
        "5",
        "--no-progress",
        *map(str, extra),
    ]


def read_jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def without_timing(records):
    """Records minus their statistics (tokens/s differs from run to run)."""
    return [{k: v for k, v in r.items() if k != "stats"} for r in records]


def test_prompt_on_default_model_streams_same_text(capsys):
    """The README's main command on the embedded SmolLM2 (fp32 on CPU): greedy text is the same
    for plain decoding and for SAM-Decoding (lossless); statistics go to stderr."""
    texts = {}
    for method in ("ar", "sam+tr"):
        args = [
            "generate",
            "--prompt",
            "List three colours.",
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
            "--method",
            method,
        ]
        assert cli.main(args) == 0
        out, err = capsys.readouterr()
        assert out.strip() and "tokens/s" in err and f"method {method}" in err
        texts[method] = out
    assert texts["ar"] == texts["sam+tr"]


def test_jsonl_resume_after_interrupt(capsys, monkeypatch, tmp_path, tiny_model_dir, prompts_file):
    """5 records, batch size 2, sampling with a seed: interrupted during the second batch, the run
    leaves only out.jsonl.partial with the first two records; the same command finishes the other
    three and the final file equals an uninterrupted run's (the resumed records keep their samples:
    keyed by record, not by their place in the resumed call), in input order, input fields kept."""
    src = prompts_file(PROMPTS)
    ref = tmp_path / "ref.jsonl"
    sample = ["--batch-size", "2", "--temperature", "1.5", "--seed", "7"]
    assert cli.main(tiny_args(tiny_model_dir, "--input", src, "--output", ref, *sample)) == 0

    out = tmp_path / "out.jsonl"
    argv = tiny_args(tiny_model_dir, "--input", src, "--output", out, *sample)
    real = cli_generate.Session.generate
    written = []

    def interrupt_after_two_records(self, prompts, on_progress=None, on_finish=None, keys=None):
        def finish(*args):  # records are written as their requests finish
            on_finish(*args)
            written.append(args[0])
            if len(written) == 2:
                raise KeyboardInterrupt

        return real(self, prompts, on_progress, finish, keys)

    monkeypatch.setattr(cli_generate.Session, "generate", interrupt_after_two_records)
    capsys.readouterr()
    assert cli.main(argv) == 130
    assert "resumes" in capsys.readouterr().err
    assert not out.exists()
    partial = out.with_name("out.jsonl.partial").read_text().splitlines()
    assert len(partial) == 1 + 2  # header + the two records finished before the interrupt

    monkeypatch.setattr(cli_generate.Session, "generate", real)
    assert cli.main(argv) == 0
    assert "resuming" in capsys.readouterr().err
    assert without_timing(read_jsonl(out)) == without_timing(read_jsonl(ref))
    assert [r["id"] for r in read_jsonl(out)] == list("abcde")
    assert all(r["num_tokens"] >= 1 and "completion" in r for r in read_jsonl(out))
    assert not out.with_name("out.jsonl.partial").exists()

    assert cli.main(argv) == 0  # complete already: nothing to do, said so
    assert "already exists and is complete" in capsys.readouterr().err


def test_profile_writes_a_trace(capfd, tmp_path, tiny_model_dir):
    """--profile traces the first --profile-windows host-check windows, gzipped (issue 14: 68 MB
    for 2 prompts x 16 tokens before), and kineto's own lines stay off stderr."""
    import gzip

    def forwards(prof, windows):
        argv = tiny_args(tiny_model_dir, "--prompt", "Hi", "--profile", prof)
        argv[argv.index("--max-new-tokens") + 1] = "24"
        assert cli.main([*argv, "--check-every", "2", "--profile-windows", str(windows)]) == 0
        err = capfd.readouterr().err
        assert "USDT" not in err and "gpuGetDeviceCount" not in err, err
        assert f"trace written to {prof / 'trace.json.gz'}" in err
        trace = json.loads(gzip.decompress((prof / "trace.json.gz").read_bytes()))
        names = [e.get("name") for e in trace["traceEvents"]]
        assert "samgpu.cli.generate" in names
        # the decode step's stages, named as its NVTX ranges (samgpu.decoding.stages.STAGES)
        assert {"samgpu.draft", "samgpu.forward", "samgpu.verify", "samgpu.commit"} <= set(names)
        assert (prof / "summary.txt").read_text().strip()
        return names.count("samgpu.forward")

    one, three = forwards(tmp_path / "p1", 1), forwards(tmp_path / "p3", 3)
    assert 1 <= one <= 2 < three <= 6  # steps of the traced windows only (2 per window)


def test_torchrun_two_cpu_processes(tmp_path, tiny_model_dir, prompts_file):
    """torchrun --nproc-per-node 2 -m samgpu generate: shards round-robin, gathers on rank 0 (gloo),
    writes the same file as one process."""
    src = prompts_file(PROMPTS)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    stats_one, stats_two = tmp_path / "one.json", tmp_path / "two.json"
    argv = tiny_args(tiny_model_dir, "--input", src, "--output", one, "--raw")
    assert cli.main([*argv, "--stats-json", str(stats_one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "samgpu",
            *tiny_args(
                tiny_model_dir,
                "--input",
                src,
                "--output",
                two,
                "--raw",
                "--batch-size",
                "2",
                "--stats-json",
                stats_two,
            ),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert without_timing(read_jsonl(two)) == without_timing(read_jsonl(one))
    assert [r["id"] for r in read_jsonl(two)] == list("abcde")
    # --stats-json totals: the tokens actually written, and how many processes made them
    for path, world in ((stats_one, 1), (stats_two, 2)):
        stats = json.loads(path.read_text())
        assert stats["world_size"] == world and stats["records"] == 5
        assert stats["new_tokens"] == sum(r["num_tokens"] for r in read_jsonl(one)) > 0
        assert stats["tokens_per_second"] > 0
        busy = stats["rank_generate_seconds"]
        assert len(busy) == world and 0 < max(busy) <= stats["generate_seconds"]


def test_continuous_batching_writes_the_same_file(capsys, tmp_path, tiny_model_dir, prompts_file):
    """--continuous-batching (slots refilled as sequences finish) changes when work happens, not
    what is written: the same records in the same order, greedy."""
    src = prompts_file(PROMPTS)
    outs = []
    for name, extra in (("plain", []), ("cont", ["--continuous-batching"])):
        out = tmp_path / f"{name}.jsonl"
        argv = tiny_args(
            tiny_model_dir, "--input", src, "--output", out, "--raw", "--batch-size", "2",
            "--method", "sam+tr", "--index", "none", "--max-new-tokens", "12", *extra,
        )  # fmt: skip
        assert cli.main(argv) == 0
        outs.append(without_timing(read_jsonl(out)))
    assert outs[0] == outs[1] and [r["id"] for r in outs[1]] == list("abcde")


def test_torchrun_rank_failure_stops_every_rank(tmp_path, tiny_model_dir, prompts_file):
    """One rank running out of memory mid-run: every rank stops at the end of that round with a
    message and a non-zero exit, and rank 0 first saves the records the healthy rank finished in
    it (before, torchrun killed rank 0 with them unsaved); no complete output file appears."""
    src = prompts_file(PROMPTS)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    argv = tiny_args(tiny_model_dir, "--input", src, "--output", out, "--raw", "--batch-size", "2")
    argv.append("--no-continuous-batching")  # rounds of one batch per rank
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "tests._fail_rank", *map(str, argv)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "out of GPU memory" in proc.stderr and "another process failed" in proc.stderr
    assert not out.exists()
    partial = read_jsonl(str(out) + ".partial")
    assert [r["index"] for r in partial[1:]] == [0, 2]  # rank 0's first batch
    assert all(r["record"]["completion"] for r in partial[1:])


def test_seeded_sampling_is_reproducible(tmp_path, tiny_model_dir, prompts_file):
    """--temperature/--top-k/--top-p/--seed reach the sampler: the same seed gives the same file,
    another seed (almost surely) another one."""
    src = prompts_file(PROMPTS[:1])
    sample = ["--temperature", "1.5", "--top-k", "50", "--top-p", "0.95", "--raw"]
    outs = []
    for seed, name in ((3, "a"), (3, "b"), (4, "c")):
        out = tmp_path / f"{name}.jsonl"
        argv = tiny_args(tiny_model_dir, "--input", src, "--output", out, "--seed", seed, *sample)
        assert cli.main(argv) == 0
        outs.append([r["completion"] for r in read_jsonl(out)])
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_samples_are_per_record_whatever_the_method_and_batching(
    tmp_path, tiny_model_dir, prompts_file
):
    """A seed gives each record its own sample (keyed by its index in the file, not its slot or
    round): the same file with `ar` one record at a time, `ar` in rounds of 2 and `sam+tr` with
    continuous batching; the same prompt on three lines gets three samples."""
    src = prompts_file(PROMPTS[:3] + [PROMPTS[0], PROMPTS[0]])
    sample = ["--temperature", "1.5", "--seed", "5", "--raw", "--max-new-tokens", "8"]
    outs = []
    for name, extra in (
        ("b1", ["--batch-size", "1", "--no-continuous-batching"]),
        ("b2", ["--batch-size", "2", "--no-continuous-batching"]),
        ("cont", ["--batch-size", "2", "--continuous-batching", "--method", "sam+tr"]),
    ):
        out = tmp_path / f"{name}.jsonl"
        argv = tiny_args(tiny_model_dir, "--input", src, "--output", out, *sample, *extra)
        argv += ["--index", "none"]
        assert cli.main(argv) == 0
        outs.append([r["completion"] for r in read_jsonl(out)])
    assert outs[0] == outs[1] == outs[2]
    assert len({outs[0][0], outs[0][3], outs[0][4]}) == 3


def test_store_is_loaded_and_saved_across_runs(tmp_path, tiny_model_dir, prompts_file, capsys):
    """`--store PATH`: the first run creates the store file at the end, the second loads it and
    drafts from it; both outputs equal `ar`'s (the store changes drafts, never text)."""
    from samgpu.drafters.parts.store_file import read_store_file

    prompts = [{"id": i, "prompt": p} for i, p in enumerate(["Count: one two", "Say hi", "Hi"])]
    src = prompts_file(prompts)
    store = tmp_path / "run.samstore"

    def run(name: str, *extra) -> list[dict]:
        out = tmp_path / name
        argv = tiny_args(tiny_model_dir, "--input", src, "--output", out, "--index", "none")
        assert cli.main([*argv, *map(str, extra)]) == 0
        return read_jsonl(out)

    ar = run("ar.jsonl")
    first = run("first.jsonl", "--method", "sam+tr", "--store", store)
    assert "store saved to" in capsys.readouterr().err
    assert len(read_store_file(store).documents()) == len(prompts)  # one per response
    second = run("second.jsonl", "--method", "sam+tr", "--store", store)
    for got in (first, second):
        assert [r["completion"] for r in got] == [r["completion"] for r in ar]


def test_one_prompt_run_saves_its_store_too(tmp_path, tiny_model_dir, capsys):
    """`--prompt ... --store PATH` keeps its response in the store like a file run (it used to
    run without ever saving); a second prompt run appends to it."""
    from samgpu.drafters.parts.store_file import read_store_file

    store = tmp_path / "one.samstore"
    for n, prompt in enumerate(("Count: one two", "Say hi"), start=1):
        argv = tiny_args(tiny_model_dir, "--prompt", prompt, "--index", "none", "--method", "sam")
        assert cli.main([*argv, "--store", str(store)]) == 0
        assert "store saved to" in capsys.readouterr().err
        assert len(read_store_file(store).documents()) == n


def test_store_needs_an_automaton_method(tmp_path, tiny_model_dir, prompts_file, capsys):
    src = prompts_file([{"prompt": "Hi"}])
    argv = tiny_args(tiny_model_dir, "--input", src, "--output", tmp_path / "o.jsonl")
    assert cli.main([*argv, "--store", str(tmp_path / "s.samstore")]) == 2
    assert "--store needs a method that drafts from automata" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl.partial").exists()
