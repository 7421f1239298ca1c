"""What a `samgpu generate --input/--output` run leaves behind, tried as a new user would (issue
14): never a complete-looking file that is not what the command asked for, and never a leftover
from a failed set-up that blocks the corrected command.

- a final output counts as done only for the same input and settings (its fingerprint);
- the output is never the input;
- every check that can fail (options, index, prompts) runs before any output file exists, and a
  set-up that fails later (out of memory) removes the partial file it made;
- file-system refusals, SIGTERM and undecodable input are one line each, naming what and where.
"""

import json
import os
import signal

import pytest

from samgpu import cli
from samgpu.cli import generate as cli_generate
from tests.api import fixtures

tiny_model_dir = fixtures.tiny_model_dir
prompts_file = fixtures.prompts_file

PROMPTS = [{"id": i, "prompt": f"Say {i}."} for i in range(3)]


def gen(model_dir, src, out, *extra):
    argv = ["generate", "--model", model_dir, "--method", "ar", "--device", "cpu", "--raw",
            "--max-new-tokens", "3", "--no-progress", "--input", src, "--output", out]  # fmt: skip
    return [str(a) for a in [*argv, *extra]]


def run(capsys, argv):
    code = cli.main(argv)
    return code, capsys.readouterr().err


def error_line(err):
    lines = [x for x in err.splitlines() if x.startswith("samgpu: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


# --------------------------------------------------------------------------- item 1: fingerprint
def test_complete_output_of_other_settings_is_refused(
    capsys, tmp_path, tiny_model_dir, prompts_file
):
    """--limit 2, then the same without --limit: refused (exit 2) naming what changed, the file
    untouched; the same command as the first says complete; --overwrite makes all three."""
    src, out = prompts_file(PROMPTS), tmp_path / "out.jsonl"
    assert cli.main(gen(tiny_model_dir, src, out, "--limit", "2")) == 0
    first = out.read_bytes()
    assert len(records(out)) == 2

    code, err = run(capsys, gen(tiny_model_dir, src, out))
    line = error_line(err)
    assert code == 2 and "num_records: 2 -> 3" in line and "--overwrite" in line
    assert out.read_bytes() == first

    code, err = run(capsys, gen(tiny_model_dir, src, out, "--limit", "2"))
    assert code == 0 and "already exists and is complete" in err

    argv = gen(tiny_model_dir, src, out, "--max-new-tokens", "2")  # another setting, same story
    code, err = run(capsys, argv)
    assert code == 2 and "max_new_tokens: 3 -> 2" in error_line(err)

    assert cli.main(gen(tiny_model_dir, src, out, "--overwrite")) == 0
    assert [r["id"] for r in records(out)] == [0, 1, 2]


def test_changed_input_or_edited_output_is_refused(capsys, tmp_path, tiny_model_dir, prompts_file):
    src, out = prompts_file(PROMPTS), tmp_path / "out.jsonl"
    assert cli.main(gen(tiny_model_dir, src, out)) == 0

    with open(out, "a") as f:  # an edit after samgpu finished it
        f.write('{"id": 9}\n')
    code, err = run(capsys, gen(tiny_model_dir, src, out))
    assert code == 2 and "was changed after samgpu finished it" in error_line(err)

    assert cli.main(gen(tiny_model_dir, src, out, "--overwrite")) == 0
    prompts_file([*PROMPTS[:2], {"id": 2, "prompt": "Say two."}])  # same count, other text
    code, err = run(capsys, gen(tiny_model_dir, src, out))
    assert code == 2 and "input_sha256" in error_line(err)


def test_a_file_samgpu_did_not_write_is_not_taken_as_done(capsys, tmp_path, prompts_file):
    """An existing --output without a fingerprint (another program's, or an older samgpu's) is
    refused before any model loads, and left as it was."""
    src, out = prompts_file(PROMPTS), tmp_path / "notes.jsonl"
    out.write_text('{"mine": true}\n')
    code, err = run(capsys, gen("no-such-model", src, out))
    assert code == 2 and "not as a finished samgpu output" in error_line(err)
    assert out.read_text() == '{"mine": true}\n'
    assert names(tmp_path) == ["in.jsonl", "notes.jsonl"]


# --------------------------------------------------------------------------- item 2: output = input
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_output_equal_to_input_is_refused(capsys, tmp_path, prompts_file, overwrite):
    src = prompts_file(PROMPTS)
    before = src.read_bytes()
    same = tmp_path / "sub" / ".." / "in.jsonl"  # the same file under another spelling
    (tmp_path / "sub").mkdir()
    extra = ["--overwrite"] if overwrite else []
    code, err = run(capsys, gen("no-such-model", src, same, *extra))
    assert code == 2 and "is the --input file" in error_line(err)
    assert src.read_bytes() == before and names(tmp_path) == ["in.jsonl", "sub"]


# --------------------------------------------------------------------------- items 3/4: set-up
@pytest.mark.parametrize(
    "extra, message",
    [
        (["-O", "no_such_option=1", "--method", "tr"], "no_such_option"),
        (["--index", "{bad}", "--method", "sam+tr"], "corrupt"),
        (["--method", "sam+tr", "--index", "{missing}"], "not found"),
    ],
    ids=["unknown-option", "corrupt-index", "missing-index"],
)
def test_failed_checks_create_no_file(
    capsys, tmp_path, tiny_model_dir, prompts_file, extra, message
):
    """Options and index are checked before the output is opened: nothing is created, and the
    corrected command runs without --overwrite."""
    src, out = prompts_file(PROMPTS), tmp_path / "out.jsonl"
    bad = tmp_path / "bad.samidx"
    bad.write_bytes(b"SAMIDX\0\0" + b"\0" * 40)
    extra = [x.format(bad=bad, missing=tmp_path / "none.samidx") for x in extra]
    code, err = run(capsys, gen(tiny_model_dir, src, out, *extra))
    assert code == 2 and message in error_line(err)
    assert names(tmp_path) == ["bad.samidx", "in.jsonl"]
    assert cli.main(gen(tiny_model_dir, src, out)) == 0


def test_checks_run_before_the_model_loads(
    capsys, monkeypatch, tmp_path, tiny_model_dir, prompts_file
):
    """A bad index or --strict prompt is reported without loading any weights (they used to come
    after a 12-16 s model load)."""
    from samgpu import api, resolve

    def no_weights(*a, **k):
        raise AssertionError("the model was loaded before the checks")

    monkeypatch.setattr(resolve, "load_model", no_weights)
    monkeypatch.setattr(api, "load_model", no_weights)
    src, out = prompts_file([{"prompt": "x " * 200}]), tmp_path / "out.jsonl"
    code, err = run(capsys, gen(tiny_model_dir, src, out, "--strict"))
    assert code == 2 and "--strict" in error_line(err)
    code, err = run(capsys, gen(tiny_model_dir, src, out, "--index", tmp_path / "none.samidx",
                                "--method", "sam+tr"))  # fmt: skip
    assert code == 2 and "not found" in error_line(err)


def test_out_of_memory_at_set_up_leaves_no_partial(
    capsys, monkeypatch, tmp_path, tiny_model_dir, prompts_file
):
    from samgpu import api

    real = api.SamDecoder.ensure_capacity

    def oom(self, num_reqs, max_len, sampling=None):
        raise api.SetupError("out of GPU memory while allocating the KV cache; try batch size 1")

    monkeypatch.setattr(api.SamDecoder, "ensure_capacity", oom)
    src, out = prompts_file(PROMPTS), tmp_path / "out.jsonl"
    code, err = run(capsys, gen(tiny_model_dir, src, out, "--max-new-tokens", "4"))
    assert code == 1 and "out of GPU memory" in error_line(err)
    assert names(tmp_path) == ["in.jsonl"]  # no header-only partial, no lock
    monkeypatch.setattr(api.SamDecoder, "ensure_capacity", real)
    assert cli.main(gen(tiny_model_dir, src, out, "--max-new-tokens", "2")) == 0


def test_set_up_warms_up_in_the_runs_sampling_mode(
    monkeypatch, tmp_path, tiny_model_dir, prompts_file
):
    """The set-up's warm-up gets the run's temperature, top_k and top_p: a run's step graphs are
    keyed by them (warmed up greedy, a sampled run compiled and captured in its first steps, on
    an H200: tests/decoding/test_no_compile_cuda.py). Control: a greedy run's is greedy."""
    from samgpu import api

    real = api.SamDecoder.ensure_capacity
    seen = []

    def spy(self, num_reqs, max_len, sampling=None):
        seen.append(sampling)
        return real(self, num_reqs, max_len, sampling)

    monkeypatch.setattr(api.SamDecoder, "ensure_capacity", spy)
    src = prompts_file(PROMPTS)
    sampled = ("--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--seed", "1")
    assert cli.main(gen(tiny_model_dir, src, tmp_path / "a.jsonl", "--max-new-tokens", "2",
                        *sampled)) == 0  # fmt: skip
    assert seen[0].graph_mode == (True, 0.7, 5, 0.9)
    seen.clear()
    assert cli.main(gen(tiny_model_dir, src, tmp_path / "b.jsonl", "--max-new-tokens", "2")) == 0
    assert seen[0].graph_mode == (False, 0.0, 0, 1.0)


# --------------------------------------------------------------------------- item 5: file system
def test_unwritable_output_folder_is_one_line_before_anything(
    capsys, monkeypatch, tmp_path, prompts_file
):
    src = prompts_file(PROMPTS)
    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **k: False if str(p) == str(folder) else real(p, mode, **k)
    )
    code, err = run(capsys, gen("no-such-model", src, folder / "out.jsonl"))
    line = error_line(err)
    assert code == 2 and "cannot write in folder" in line and str(folder) in line
    assert names(folder) == []


def test_stats_json_counts_skips_and_is_not_rewritten_by_a_complete_output(
    capsys, tmp_path, tiny_model_dir, prompts_file
):
    """--stats-json counts the skipped records; run again on the complete output, it writes no
    stats of zeros (the run's file would be overwritten) and says so. Control: the first run
    wrote it."""
    src = prompts_file([*PROMPTS, {"id": 9, "prompt": ""}])
    out, stats, again = tmp_path / "out.jsonl", tmp_path / "s.json", tmp_path / "again.json"
    code, _ = run(capsys, gen(tiny_model_dir, src, out, "--allow-skips", "--stats-json", stats))
    assert code == 0 and json.loads(stats.read_text())["skipped_records"] == 1
    code, err = run(capsys, gen(tiny_model_dir, src, out, "--allow-skips", "--stats-json", again))
    assert code == 0 and "complete" in err and "not written: nothing was generated" in err
    assert not again.exists()


def test_stats_json_that_cannot_be_written_fails_at_the_start(capsys, tmp_path, prompts_file):
    """--stats-json under a path that is a file used to fail with a traceback after the whole
    run; now it is one line before anything runs."""
    src, out = prompts_file(PROMPTS), tmp_path / "out.jsonl"
    (tmp_path / "afile").write_text("x")
    code, err = run(
        capsys, gen("no-such-model", src, out, "--stats-json", tmp_path / "afile" / "s.json")
    )
    assert code == 2 and "is a file, not a folder" in error_line(err)
    assert names(tmp_path) == ["afile", "in.jsonl"]


def test_os_error_mid_run_is_one_line_and_keeps_the_partial(
    capsys, monkeypatch, tmp_path, tiny_model_dir, prompts_file
):
    from samgpu.io import OutputWriter

    def full(self, *a, **k):
        raise OSError(28, "No space left on device", str(self.path))

    monkeypatch.setattr(OutputWriter, "finalize", full)
    src, out = prompts_file(PROMPTS), tmp_path / "out.jsonl"
    code, err = run(capsys, gen(tiny_model_dir, src, out))
    line = error_line(err)
    assert code == 1 and "No space left on device" in line and "resumes" in line
    assert len(records(out.with_name("out.jsonl.partial"))) == 1 + 3


# --------------------------------------------------------------------------- SIGTERM
def test_sigterm_says_what_was_saved(capsys, monkeypatch, tmp_path, tiny_model_dir, prompts_file):
    real = cli_generate.Session.generate

    def terminated_after_one(self, prompts, on_progress=None, on_finish=None, keys=None):
        def finish(*args):
            on_finish(*args)
            os.kill(os.getpid(), signal.SIGTERM)

        return real(self, prompts, on_progress, finish, keys)

    monkeypatch.setattr(cli_generate.Session, "generate", terminated_after_one)
    src, out = prompts_file(PROMPTS), tmp_path / "out.jsonl"
    code, err = run(capsys, gen(tiny_model_dir, src, out))
    line = error_line(err)
    assert code == 143 and "terminated (SIGTERM)" in line and "same command resumes" in line
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    monkeypatch.setattr(cli_generate.Session, "generate", real)
    code, err = run(capsys, gen(tiny_model_dir, src, out))
    assert code == 0 and "resuming" in err and len(records(out)) == 3


def test_interrupt_before_any_record_does_not_promise_a_partial_file(capsys, monkeypatch, tmp_path):
    """Ctrl-C while the model loads: nothing was written, and the message says so instead of
    naming a .partial file that does not exist (test_sigterm_says_what_was_saved: once records
    are written, it names the file)."""

    def interrupted_while_loading(parser, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted_while_loading)
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--input", str(tmp_path / "p.jsonl"), "--output", str(out)]
    code, err = run(capsys, argv)
    line = error_line(err)
    assert code == 130 and f"nothing was written to {out} yet" in line and ".partial" not in line
    assert not out.with_name("out.jsonl.partial").exists()


def test_sigterm_swallowed_by_a_library_still_ends_as_sigterm(capsys, monkeypatch, tmp_path):
    """SIGTERM raised inside a library's C callback is swallowed there and the library fails with
    its own error (numba compiling the index build when SIGTERM came): the run still ends with
    the SIGTERM line and status, not a traceback. Negative control: the same error without a
    signal is not hidden."""

    def index_build_killed(parser, args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except cli.Terminated:
            pass  # (what a C callback does with it)
        raise RuntimeError("no compiled object yet for <Library 'sam_flatten'>")

    monkeypatch.setattr(cli, "_run", index_build_killed)
    argv = ["generate", "--prompt", "hi", "--device", "cpu"]
    code, err = run(capsys, argv)
    assert code == 143 and "terminated (SIGTERM)" in error_line(err)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def index_build_failed(parser, args):
        raise RuntimeError("no compiled object yet for <Library 'sam_flatten'>")

    monkeypatch.setattr(cli, "_run", index_build_failed)
    with pytest.raises(RuntimeError, match="no compiled object"):
        cli.main(argv)


# --------------------------------------------------------------------------- item 6: UTF-8
def test_invalid_utf8_deep_in_a_file_names_line_column_and_byte(tmp_path):
    from samgpu.errors import InputError
    from samgpu.io import read_records

    head = "".join(json.dumps({"prompt": "x" * 100}) + "\n" for _ in range(150))  # > 8 KiB
    bad = b'{"prompt": "ab\xffc"}\n'
    f = tmp_path / "in.jsonl"
    f.write_bytes(head.encode() + bad)
    with pytest.raises(InputError) as e:
        read_records(f)
    at = bad.index(b"\xff")
    byte = len(head.encode()) + at
    assert "in.jsonl:151: not UTF-8 text" in str(e.value)
    assert f"column {at + 1}," in str(e.value) and f"byte {byte} " in str(e.value)
    f.write_bytes(b"\xef\xbb\xbf" + head.encode())  # control: a BOM is fine
    assert len(read_records(f)) == 150


def test_library_warnings_print_as_one_cli_line(capsys, monkeypatch):
    """Inside the CLI a `samgpu: ...` warning is one `samgpu: warning: ...` line (rank-prefixed
    under torchrun), not Python's `path:line: UserWarning:` pair; another library's warning goes
    where warnings went before (the control), and the hook is gone afterwards."""
    import warnings

    from samgpu.cli.output import library_warnings_as_lines

    monkeypatch.setenv("RANK", "1")
    others = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: others.append(str(message))
        before = warnings.showwarning
        with library_warnings_as_lines():
            warnings.warn("samgpu: the tree attention runs a heuristic", stacklevel=1)
            warnings.warn("some other library's warning", stacklevel=1)
        assert warnings.showwarning is before
    err = capsys.readouterr().err.splitlines()
    assert err == ["samgpu: warning: [rank 1] the tree attention runs a heuristic"]
    assert others == ["some other library's warning"]


def test_an_earlier_error_field_does_not_survive_a_completion(
    capsys, tmp_path, tiny_model_dir, prompts_file
):
    """An earlier run's output fed back in: the record that now gets a completion drops the stale
    "error" (tools filtering on it took the record as failed); other fields stay."""
    src = prompts_file([{"id": "x1", "prompt": "Hi", "error": "empty prompt", "tag": 7}])
    out = tmp_path / "o.jsonl"
    code, err = run(capsys, gen(tiny_model_dir, src, out))
    assert code == 0, err
    (rec,) = records(out)
    assert "error" not in rec and rec["tag"] == 7 and rec["completion"] is not None


def test_output_field_that_the_input_records_hold_is_refused(
    capsys, tmp_path, tiny_model_dir, prompts_file
):
    """--output-field naming a field the input already has (a reference answer, or the default
    "completion" in a prompt/completion dataset) replaced it silently: refused (exit 2, one line
    naming the record), no file written. An earlier samgpu output fed back in (its records hold
    the field beside finish_reason) still runs, and gets new completions."""
    src = prompts_file([{"prompt": "Hi", "answer": "42"}, {"prompt": "Yo", "completion": "ref"}])
    for flags, where in ((["--output-field", "answer"], ":1:"), ([], ":2:")):
        out = tmp_path / "out.jsonl"
        code, err = run(capsys, gen(tiny_model_dir, src, out, *flags))
        line = error_line(err)
        assert code == 2 and "--output-field" in line and where in line, line
        assert names(tmp_path) == ["in.jsonl"]
    first, again = tmp_path / "first.jsonl", tmp_path / "again.jsonl"
    assert run(capsys, gen(tiny_model_dir, prompts_file(PROMPTS), first))[0] == 0
    code, err = run(capsys, gen(tiny_model_dir, first, again, "--max-new-tokens", "2"))
    assert code == 0, err
    assert [r["id"] for r in records(again)] == [0, 1, 2]
    assert all(r["num_tokens"] <= 2 for r in records(again))


def test_interrupt_says_how_many_records_were_kept(
    capsys, monkeypatch, tmp_path, tiny_model_dir, prompts_file
):
    """Ctrl-C before any record finished said "finished records are kept" of a partial file that
    held none: the message counts them (none, then one), and the same command then finishes."""
    real = cli_generate.Session.generate

    def interrupted_at_once(self, prompts, on_progress=None, on_finish=None, keys=None):
        raise KeyboardInterrupt

    def interrupted_after_one(self, prompts, on_progress=None, on_finish=None, keys=None):
        def finish(*args):
            on_finish(*args)
            raise KeyboardInterrupt

        return real(self, prompts, on_progress, finish, keys)

    src, out = prompts_file(PROMPTS), tmp_path / "out.jsonl"
    monkeypatch.setattr(cli_generate.Session, "generate", interrupted_at_once)
    code, err = run(capsys, gen(tiny_model_dir, src, out))
    line = error_line(err)
    assert code == 130 and "no record had finished" in line and "kept in" not in line
    monkeypatch.setattr(cli_generate.Session, "generate", interrupted_after_one)
    code, err = run(capsys, gen(tiny_model_dir, src, out))
    assert code == 130 and "1 finished record kept in" in error_line(err)
    monkeypatch.setattr(cli_generate.Session, "generate", real)
    code, err = run(capsys, gen(tiny_model_dir, src, out))
    assert code == 0 and len(records(out)) == 3
