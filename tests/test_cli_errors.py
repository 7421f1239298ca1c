"""Bad input, tried as a new user would (DESIGN.md §9): each gets one `samgpu: error:` line naming
the fix, no traceback, a non-zero exit status where the run cannot go on, and never an output file
that looks complete. Most cases fail before any model loads; the rest use a tiny random checkpoint.
"""

import json
import subprocess
import sys

import pytest
import torch

from samgpu import cli
from tests.api import fixtures
from tests.api.fixtures import TINY_CONTEXT

tiny_model_dir = fixtures.tiny_model_dir
prompts_file = fixtures.prompts_file


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err):
    lines = [x for x in err.splitlines() if x.startswith("samgpu: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def gen(*extra, model=None):
    base = ["generate", "--device", "cpu", "--no-progress", "--max-new-tokens", "4"]
    if model is not None:
        base += ["--model", model, "--method", "ar"]
    return [*base, *extra]


def test_missing_input_file(capsys, tmp_path):
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, *gen("--input", tmp_path / "nope.jsonl", "--output", out))
    assert code == 2
    assert "does not exist" in one_error_line(err)
    assert not out.exists()


def test_malformed_line_names_its_number(capsys, tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": "broken"\n')
    code, _, err = run(capsys, *gen("--input", f, "--output", tmp_path / "o.jsonl"))
    assert code == 2
    assert "in.jsonl:2: not valid JSON" in one_error_line(err)


def test_record_without_text_field(capsys, tmp_path, prompts_file):
    f = prompts_file([{"prompt": "a"}, {"question": "b"}])
    code, _, err = run(capsys, *gen("--input", f, "--output", tmp_path / "o.jsonl"))
    assert code == 2
    line = one_error_line(err)
    assert "in.jsonl:2" in line and "--field" in line


def test_unknown_method_suggests_the_close_one(capsys):
    code, _, err = run(capsys, *gen("--prompt", "hi", "--method", "sam_tr"))
    assert code == 2
    line = one_error_line(err)
    assert "unknown method 'sam_tr'" in line and "'sam+tr'" in line


def test_unknown_flag_is_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--prompt", "hi", "--temprature", "0.5"])
    assert e.value.code == 2
    assert "unrecognized arguments: --temprature" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, pattern",
    [
        (["--batch-size", "0"], "--batch-size 0 must be >= 1"),
        (["--top-p", "1.5"], r"--top-p 1.5 must be in \(0, 1\]"),
        (["--temperature", "-1"], "--temperature -1.0 must be a finite number >= 0"),
        (["--temperature", "inf"], "--temperature inf must be a finite number >= 0"),
        (["--seed", str(2**64)], "--seed 18446744073709551616 must fit in 64 bits"),
        (["--threads", "100000"], r"--threads 100000 must be in \[1, 1024\]"),
        (["-O", "oops"], "must look like KEY=VALUE"),
    ],
    ids=[
        "batch-size",
        "top-p",
        "temperature",
        "temperature-inf",
        "seed",
        "threads",
        "option-syntax",
    ],
)
def test_bad_values(capsys, flags, pattern):
    import re

    code, _, err = run(capsys, *gen("--prompt", "hi", *flags))
    assert code == 2
    assert re.search(pattern, one_error_line(err))


@pytest.mark.parametrize(
    "flags, pattern",
    [
        (["--output-field", "prompt"], "would overwrite the prompt"),
        (["--field", "question", "--output-field", "question"], "is --field"),
        (["--output-field", "stats"], "a key samgpu writes itself"),
    ],
    ids=["auto-prompt-field", "explicit-field", "reserved"],
)
def test_output_field_never_overwrites_the_prompt_or_samgpus_keys(
    capsys, tmp_path, prompts_file, flags, pattern
):
    """The completion under the prompt's own field, or under a key samgpu writes beside it,
    would lose one of them: refused before anything runs (no file). Control: another name runs
    through the checks."""
    src, out = prompts_file([{"prompt": "a", "question": "b"}]), tmp_path / "o.jsonl"
    code, _, err = run(capsys, *gen("--input", src, "--output", out, *flags))
    assert code == 2 and pattern in one_error_line(err) and not out.exists()
    from samgpu.cli.generate import check_output_field

    ok = cli.build_parser().parse_args(["generate", "--input", "x", "--output-field", "answer"])
    check_output_field(ok)


def test_output_without_input_and_input_without_output(capsys, tmp_path, prompts_file):
    code, _, err = run(capsys, *gen("--prompt", "hi", "--output", tmp_path / "o.jsonl"))
    assert code == 2 and "--output goes with --input" in one_error_line(err)
    code, _, err = run(capsys, *gen("--prompt", "hi", "--stats-json", tmp_path / "s.json"))
    assert code == 2 and "--stats-json goes with --input" in one_error_line(err)
    code, _, err = run(capsys, *gen("--prompt", "hi", "--continuous-batching"))
    assert code == 2 and "--continuous-batching goes with --input" in one_error_line(err)
    src = prompts_file([{"prompt": "a"}])
    code, _, err = run(
        capsys, *gen("--input", src, "--output", tmp_path / "o.jsonl", "--stats-json", tmp_path)
    )
    assert code == 2 and "is a directory" in one_error_line(err)
    code, _, err = run(capsys, *gen("--input", prompts_file([{"prompt": "a"}])))
    assert code == 2 and "--input needs --output" in one_error_line(err)


def test_empty_prompt(capsys):
    code, _, err = run(capsys, *gen("--prompt", "   "))
    assert code == 2 and "prompt is empty" in one_error_line(err)


def test_cuda_requested_but_unavailable(capsys, monkeypatch, tmp_path, prompts_file):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "o.jsonl"
    f = prompts_file([{"prompt": "a"}])
    code, _, err = run(capsys, "generate", "--device", "cuda", "--input", f, "--output", out)
    assert code == 1
    line = one_error_line(err)
    assert "CUDA was requested" in line and "--device cpu" in line
    assert not out.exists()


def test_unknown_drafter_option(capsys, tiny_model_dir):
    argv = gen("--prompt", "hi", model=str(tiny_model_dir))
    argv[argv.index("ar")] = "tr"
    code, _, err = run(capsys, *argv, "-O", "no_such_option=3")
    assert code == 2
    assert "no_such_option" in one_error_line(err)


def test_model_path_missing(capsys, tmp_path):
    code, _, err = run(capsys, *gen("--prompt", "hi", model=str(tmp_path / "no-model")))
    assert code == 2 and "not found" in one_error_line(err)


def test_index_for_another_tokenizer_and_corrupt_index(capsys, tmp_path, tiny_model_dir):
    import numpy as np

    from samgpu.sam import SamIndex

    other = SamIndex.build(
        [np.array([5, 6, 7], dtype=np.int32)],
        vocab_size=49152,
        eos_id=2,
        tokenizer_fingerprint="another-tokenizer",
    )
    path = other.save(tmp_path / "other.samidx")
    argv = gen("--prompt", "hi", model=str(tiny_model_dir))
    code, _, err = run(capsys, *argv, "--index", path)
    assert code == 2 and "built for tokenizer" in one_error_line(err)

    bad = tmp_path / "bad.samidx"
    bad.write_bytes(path.read_bytes()[:100])
    code, _, err = run(capsys, *argv, "--index", bad)
    assert code == 2 and "corrupt" in one_error_line(err)
    code, _, err = run(capsys, *argv, "--index", tmp_path / "none.samidx")
    assert code == 2 and "not found" in one_error_line(err)


def test_out_of_memory_at_setup_names_a_batch_size(
    capsys, monkeypatch, tmp_path, tiny_model_dir, prompts_file
):
    from samgpu import api

    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(api.SamDecoder, "runner", property(oom))
    out = tmp_path / "o.jsonl"
    f = prompts_file([{"prompt": "a"}] * 8)
    code, _, err = run(
        capsys, *gen("--input", f, "--output", out, "--batch-size", "8", model=str(tiny_model_dir))
    )
    assert code == 1
    line = one_error_line(err)
    assert "out of GPU memory" in line and "--batch-size 4" in line
    assert not out.exists()


def test_over_long_and_empty_prompts_skipped_or_strict(
    capsys, tmp_path, tiny_model_dir, prompts_file
):
    """The tiny model's context is 96 tokens: a 200-word prompt cannot fit. Without --strict it is
    skipped with a warning (its output record carries an `error`) and the run exits 3 (0 with
    --allow-skips); with --strict the run stops at its line, before any file is written."""
    long = " ".join(["word"] * (2 * TINY_CONTEXT))
    f = prompts_file([{"prompt": long}, {"prompt": ""}, {"prompt": "Hi"}])
    out = tmp_path / "o.jsonl"
    code, _, err = run(
        capsys, *gen("--input", f, "--output", out, "--strict", model=str(tiny_model_dir))
    )
    assert code == 2
    assert "in.jsonl:1: prompt of" in one_error_line(err) and "context of 96" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # nothing written

    code, _, err = run(capsys, *gen("--input", f, "--output", out, model=str(tiny_model_dir)))
    assert code == 3, err
    assert "in.jsonl:1" in err and "in.jsonl:2: empty prompt" in err and "2 skipped" in err
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["finish_reason"] for r in recs] == ["skipped", "skipped", "length"]
    assert recs[0]["completion"] is None and "context" in recs[0]["error"]
    # the same command again: complete, and still says so by its status
    code, _, err = run(capsys, *gen("--input", f, "--output", out, model=str(tiny_model_dir)))
    assert code == 3 and "complete" in err and "2 skipped" in err
    argv = gen("--input", f, "--output", out, "--allow-skips", model=str(tiny_model_dir))
    assert run(capsys, *argv)[0] == 0


def test_no_record_can_run_is_an_error_and_writes_nothing(
    capsys, tmp_path, tiny_model_dir, prompts_file
):
    """--max-new-tokens beyond the context skips every record: an error (exit 2) before any file
    exists, so the corrected command then runs (it used to write a complete-looking file of null
    completions that the corrected command took as done)."""
    f = prompts_file([{"prompt": "Hi"}, {"prompt": "Hello"}])
    out = tmp_path / "o.jsonl"
    argv = gen("--input", f, "--output", out, model=str(tiny_model_dir))
    argv[argv.index("--max-new-tokens") + 1] = str(10 * TINY_CONTEXT)
    code, _, err = run(capsys, *argv)
    assert code == 2 and "no record can run" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    code, _, err = run(capsys, *gen("--input", f, "--output", out, model=str(tiny_model_dir)))
    assert code == 0, err
    assert [json.loads(x)["finish_reason"] for x in out.read_text().splitlines()] == ["length"] * 2


def test_console_script_exit_code_and_no_traceback(tmp_path):
    """The real entry point, as a user runs it."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "samgpu",
            "generate",
            "--input",
            str(tmp_path / "x.jsonl"),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("samgpu: error:") and "Traceback" not in proc.stderr


def test_bench_dispatches_to_profiling(capfd):
    """`samgpu bench ARGS` is profiling.bench_e2e's command line, run from the checkout in a child
    process (samgpu itself never imports profiling)."""
    assert cli.main(["bench", "--help"]) == 0
    assert "usage: samgpu bench" in capfd.readouterr().out


def test_bench_outside_a_checkout_says_how_to_run_it(monkeypatch, capsys):
    from samgpu.cli import bench

    monkeypatch.setattr(bench, "checkout_root", lambda: None)
    assert cli.main(["bench", "--help"]) == 2
    assert "clone the samgpu repository" in capsys.readouterr().err


def test_index_subcommand_is_wired(capsys, tmp_path):
    """`samgpu index stats PATH` runs samgpu.sam.cli (one JSON line); a bad file is one error."""
    import numpy as np

    from samgpu.sam import SamIndex

    idx = SamIndex.build([np.array([3, 4, 3, 4], dtype=np.int32)], vocab_size=8, eos_id=0)
    path = idx.save(tmp_path / "i.samidx")
    assert cli.main(["index", "stats", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["states"] == idx.num_states
    (tmp_path / "junk.samidx").write_bytes(b"junk")
    assert cli.main(["index", "stats", str(tmp_path / "junk.samidx")]) == 2
    assert "error" in capsys.readouterr().err


def test_eagle_head_that_is_missing_or_not_a_head(capsys, tiny_model_dir, tmp_path, prompts_file):
    """A missing head file is refused with the other options, before anything is written; a file
    that is no safetensors at all, when the drafter is built: one line, exit 2, no traceback."""
    out = tmp_path / "out.jsonl"
    src = prompts_file([{"prompt": "a"}])
    argv = gen("--input", src, "--output", out, model=str(tiny_model_dir))
    argv[argv.index("ar")] = "eagle"
    code, _, err = run(capsys, *argv, "-O", f"head={tmp_path / 'none.safetensors'}")
    assert code == 2 and "no such EAGLE head file" in one_error_line(err)
    assert not out.exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a head")
    argv = gen("--prompt", "hi", model=str(tiny_model_dir))
    argv[argv.index("ar")] = "eagle"
    code, _, err = run(capsys, *argv, "-O", f"head={bad}")
    assert code == 2 and "not a readable EAGLE head file" in one_error_line(err)


def test_store_and_output_paths_never_overwrite_each_other(capsys, tmp_path, prompts_file):
    """--store on the output (or the input) would replace it with a store file at the end, and an
    --output naming a folder ('.') gave a traceback: both refused up front, nothing written.
    Control: a store path of its own passes the path checks."""
    src, out = prompts_file([{"prompt": "a"}]), tmp_path / "o.jsonl"
    before = src.read_bytes()
    for store in (out, src):
        code, _, err = run(
            capsys, *gen("--input", src, "--output", out, "--method", "sam", "--store", store)
        )
        assert code == 2 and "give the store its own file" in one_error_line(err)
    assert not out.exists() and src.read_bytes() == before
    for folder in (".", "./", tmp_path, f"{tmp_path}/new/"):  # (new/: wrote a file named new)
        code, _, err = run(capsys, *gen("--input", src, "--output", folder))
        assert code == 2 and "is a folder" in one_error_line(err)
    assert not (tmp_path / "new").exists()
    from samgpu.cli.generate import check_paths

    ok = cli.build_parser().parse_args(
        ["generate", "--input", str(src), "--output", str(out), "--store", str(tmp_path / "s")]
    )
    check_paths(ok)


def test_stats_json_never_writes_over_another_file(capsys, tmp_path, prompts_file):
    """--stats-json on an existing file that is not a samgpu stats file (an index, notes) is
    refused before anything runs; an earlier run's stats file may be replaced (the check passes)."""
    from samgpu.cli.generate import check_paths

    src, out = prompts_file([{"prompt": "a"}]), tmp_path / "o.jsonl"
    notes = tmp_path / "index.samidx"
    notes.write_bytes(b"SAMGPUIX not yours")
    code, _, err = run(capsys, *gen("--input", src, "--output", out, "--stats-json", notes))
    assert code == 2 and "not a samgpu stats file" in one_error_line(err)
    assert notes.read_bytes() == b"SAMGPUIX not yours" and not out.exists()
    earlier = tmp_path / "s.json"
    earlier.write_text(json.dumps({"records": 1, "new_tokens": 4, "tokens_per_second": 2.0}))
    argv = ["generate", "--input", str(src), "--output", str(out), "--stats-json", str(earlier)]
    check_paths(cli.build_parser().parse_args(argv))


def test_bench_bad_index_or_option_is_one_line(tiny_model_dir, tmp_path, capsys):
    """profiling.bench_e2e (what `samgpu bench` runs) found a missing --index or an unknown
    --option only when building its decoders, and showed a traceback there."""
    from profiling import bench_e2e

    base = ["--model", str(tiny_model_dir), "--methods", "ar", "--limit", "1",
            "--max-new-tokens", "2", "--dataset", "humaneval"]  # fmt: skip
    for extra, match in (
        (["--index", str(tmp_path / "missing.samidx"), "--methods", "sam"], "not found"),
        (["--option", "bogus=1"], "unknown option"),
    ):
        code = bench_e2e.cli_main([*base, *extra])
        err = capsys.readouterr().err
        assert code == 2 and match in err and "Traceback" not in err, err


def test_a_huge_tree_option_is_one_line(capsys):
    """-O max_nodes=99999999999 allocated until the allocator gave up, with a traceback."""
    code, _, err = run(
        capsys, *gen("--prompt", "hi", "--method", "pld", "-O", "max_nodes=99999999999")
    )
    assert code == 2 and "builds at most" in one_error_line(err)


def test_file_run_options_with_a_prompt_are_refused_and_greedy_ignores_sampling_options(capsys):
    """--limit / --overwrite / --field ... with --prompt did nothing, silently: refused, naming
    them. --seed / --top-k with greedy decoding run, with one warning line that they change
    nothing (a control without them warns nothing)."""
    code, _, err = run(capsys, *gen("--prompt", "hi", "--limit", "3", "--overwrite"))
    assert code == 2 and "--limit, --overwrite go with --input" in one_error_line(err)
    from samgpu.cli.generate import check_args

    args = cli.build_parser().parse_args(["generate", "--prompt", "hi", "--seed", "3"])
    check_args(args)
    assert "change nothing with --temperature 0" in capsys.readouterr().err
    check_args(cli.build_parser().parse_args(["generate", "--prompt", "hi"]))
    assert capsys.readouterr().err == ""
