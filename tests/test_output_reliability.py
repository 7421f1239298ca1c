"""Output files that survive kills and a second run (issue 13, parts 2-4): the partial file's
header is on disk before any work, an empty or torn-header partial means "nothing done yet", a
torn last line is dropped, one record at a time can be made durable; one writer per output (the
refusal names the other process), unique temporaries, no planted symlink followed; deeply nested
JSON input is a usage error. Kills are real (SIGKILL in a subprocess); each refusal has a control
showing the same setup succeeds without the hazard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samgpu.errors import InputError, UserError
from samgpu.io import LOCK_SUFFIX, PARTIAL_FORMAT, OutputWriter, read_records
from tests.api import fixtures

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"input_sha256": "abc", "max_new_tokens": 4}
tiny_model_dir = fixtures.tiny_model_dir
prompts_file = fixtures.prompts_file


def partial_of(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def header_line(settings=SETTINGS) -> bytes:
    return (json.dumps({"format": PARTIAL_FORMAT, "settings": settings}) + "\n").encode()


def python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


# A writer in another process: open, append the given records one by one, then die by SIGKILL
# (no close, no finally, no flush beyond what append() did) or wait to be killed.
_WRITER = """
import json, os, signal, sys, time
from samgpu.io import OutputWriter
w = OutputWriter.open(sys.argv[1], json.loads(sys.argv[2]))
for i in json.loads(sys.argv[3]):
    w.append(i, {"c": i})
print("ready", flush=True)
if sys.argv[4] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(120)
"""


def writer_process(out: Path, records: list[int], then: str) -> subprocess.Popen:
    proc = python(_WRITER, str(out), json.dumps(SETTINGS), json.dumps(records), then)
    if then == "wait":
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
    else:
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    return proc


# --------------------------------------------------------------------------- durability
def test_header_is_on_disk_before_any_work(tmp_path):
    """Killed right after open: the partial holds the complete header, so the rerun resumes
    with nothing done instead of refusing a 0-byte file."""
    out = tmp_path / "out.jsonl"
    writer_process(out, [], then="die")
    assert partial_of(out).read_bytes() == header_line()
    with OutputWriter.open(out, SETTINGS) as w:
        assert w.done == {}
        w.add_many([(0, {"c": 0})])
        w.finalize(1)
    assert lines(out) == [{"c": 0}]


@pytest.mark.parametrize(
    "content",
    [b"", header_line()[:7], header_line()[:-1], header_line()[:20] + b"\0" * 300, b"\0" * 64],
    ids=["empty", "torn-start", "no-newline", "torn-then-zeros", "zeros"],
)
def test_unstarted_partial_means_nothing_done(tmp_path, content):
    """What a kill (or power cut) during the header write leaves: resumed as an empty run."""
    out = tmp_path / "out.jsonl"
    partial_of(out).write_bytes(content)
    with OutputWriter.open(out, SETTINGS) as w:
        assert w.done == {}
    assert partial_of(out).read_bytes() == header_line()


@pytest.mark.parametrize(
    "content, words",
    [
        (b"my notes\n", "not a samgpu partial output"),
        (b"my notes", "not a samgpu partial output"),
        (header_line({"other": 1}) + b'{"index": 0, "record": {}}\n', "another input or settings"),
        (header_line() + b"garbage\n" + b'{"index": 0, "record": {}}\n', ":2: damaged line"),
    ],
    ids=["foreign-line", "foreign-no-newline", "other-settings", "damaged-middle"],
)
def test_started_or_foreign_partial_is_not_reset(tmp_path, content, words):
    """Negative control of the test above: a partial with content that is not a torn header is
    never taken for "nothing done" (it is refused and left as it was)."""
    out = tmp_path / "out.jsonl"
    partial_of(out).write_bytes(content)
    with pytest.raises(UserError, match=words):
        OutputWriter.open(out, SETTINGS)
    assert partial_of(out).read_bytes() == content


def test_torn_last_line_is_dropped_and_cut_from_the_file(tmp_path):
    out = tmp_path / "out.jsonl"
    good = header_line() + b'{"index": 0, "record": {"c": 0}}\n'
    partial_of(out).write_bytes(good + b'{"index": 1, "rec')
    with OutputWriter.open(out, SETTINGS) as w:
        assert w.done == {0: {"c": 0}}
        assert partial_of(out).read_bytes() == good  # cut, so the next line starts clean
        w.append(1, {"c": 1})
    assert [r.get("index") for r in lines(partial_of(out))] == [None, 0, 1]


def test_records_appended_one_at_a_time_survive_a_kill(tmp_path):
    out = tmp_path / "out.jsonl"
    writer_process(out, [2, 0], then="die")
    with OutputWriter.open(out, SETTINGS) as w:
        assert w.done == {2: {"c": 2}, 0: {"c": 0}}
        w.append(1, {"c": 1})
        w.finalize(3)
    assert lines(out) == [{"c": 0}, {"c": 1}, {"c": 2}]
    # no partial, lock or tmp: the file and its fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.samgpu.json"]


# --------------------------------------------------------------------------- one writer per output
def test_second_writer_is_refused_with_the_first_ones_pid(tmp_path):
    out = tmp_path / "out.jsonl"
    holder = writer_process(out, [0], then="wait")
    try:
        with pytest.raises(UserError) as err:
            OutputWriter.open(out, SETTINGS)
        msg = str(err.value)
        assert err.value.exit_code == 1 and f"pid {holder.pid} on " in msg, msg
        assert str(out) in msg and "another --output" in msg and "\n" not in msg
        assert partial_of(out).read_bytes().count(b"\n") == 2  # header + record 0, untouched
    finally:
        holder.kill()
        holder.wait(timeout=60)
    # control: the holder is gone (SIGKILL: no cleanup, its lock file stays): now it opens
    assert out.with_name(out.name + LOCK_SUFFIX).exists()
    with OutputWriter.open(out, SETTINGS) as w:
        assert w.done == {0: {"c": 0}}


def test_one_process_two_writers(tmp_path):
    out = tmp_path / "out.jsonl"
    first = OutputWriter.open(out, SETTINGS)
    with pytest.raises(UserError, match=f"pid {os.getpid()} on"):
        OutputWriter.open(out, SETTINGS)
    first.close()
    OutputWriter.open(out, SETTINGS).close()  # released by close


_RACER = """
import json, sys, time
from samgpu.errors import UserError
from samgpu.io import OutputWriter
out, go, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
time.sleep(max(0.0, go - time.time()))
try:
    w = OutputWriter.open(out, {"n": n})
except UserError as e:
    print("refused" if e.exit_code else "complete", e, flush=True)
    sys.exit(0)
w.add_many((i, {"i": i, "pad": "x" * 2000}) for i in range(n) if i not in w.done)
w.finalize(n)
print("wrote", flush=True)
"""


def test_two_runs_finishing_together_write_one_correct_file(tmp_path):
    """Two runs started at the same instant, 4 times: each either writes the file or is refused
    (or finds it complete); the file is always whole and in order, nothing is left behind."""
    n = 50
    for trial in range(4):
        out = tmp_path / f"out{trial}.jsonl"
        go = time.time() + 0.6  # both past their imports by then
        procs = [python(_RACER, str(out), str(go), str(n)) for _ in range(2)]
        results = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), results
        outcomes = sorted(o.split()[0] for o, _ in results)
        assert outcomes.count("wrote") >= 1 and "Traceback" not in str(results), results
        assert [r["i"] for r in lines(out)] == list(range(n))
        assert sorted(p.name for p in tmp_path.iterdir() if f"out{trial}" in p.name) == [
            out.name,
            out.name + ".samgpu.json",
        ]


# --------------------------------------------------------------------------- planted names
@pytest.mark.parametrize("suffix", [".partial", LOCK_SUFFIX])
def test_planted_symlink_is_not_followed(tmp_path, suffix):
    out = tmp_path / "out.jsonl"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out.with_name(out.name + suffix).symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        OutputWriter.open(out, SETTINGS)
    assert victim.read_text() == "precious\n"
    # control: the same name as a plain file is no obstacle (a stale lock; an unstarted partial)
    out.with_name(out.name + suffix).unlink()
    out.with_name(out.name + suffix).write_bytes(b"")
    OutputWriter.open(out, SETTINGS).close()


def test_final_temporary_is_unique_and_planted_tmp_is_ignored(tmp_path):
    """finalize writes a fresh `.<name>.<random>.tmp` (O_EXCL): the old fixed `<output>.tmp`,
    planted as a symlink, is neither followed nor used; a dead run's temporary is removed."""
    out = tmp_path / "out.jsonl"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out.with_name("out.jsonl.tmp").symlink_to(victim)
    leftover = tmp_path / ".out.jsonl.k3j2h1x9.tmp"  # as a kill during finalize leaves it
    leftover.write_text("half")
    with OutputWriter.open(out, SETTINGS) as w:
        assert not leftover.exists()
        w.add_many([(0, {"c": 0})])
        w.finalize(1)
    assert victim.read_text() == "precious\n" and lines(out) == [{"c": 0}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.jsonl",
        "out.jsonl.samgpu.json",
        "out.jsonl.tmp",
        "victim.txt",
    ]


# --------------------------------------------------------------------------- input
def test_deeply_nested_json_line_is_an_input_error(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "b", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(InputError, match=r"in.jsonl:2: JSON nested too deeply"):
        read_records(f)
    f.write_text('{"prompt": "a"}\n{"prompt": "b", "x": ' + "[" * 50 + "]" * 50 + "}\n")
    assert len(read_records(f)) == 2  # control: moderate nesting is fine


def test_cli_nested_json_exits_2_with_one_line(capsys, tmp_path):
    from samgpu import cli

    f = tmp_path / "in.jsonl"
    f.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    code = cli.main(["generate", "--input", str(f), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("samgpu: error:") == 1 and "Traceback" not in err, err
    assert "in.jsonl:1: JSON nested too deeply" in err


# --------------------------------------------------------------------------- the CLI, killed
def test_cli_killed_during_start_up_then_resumed(tmp_path, tiny_model_dir, prompts_file):
    """`samgpu generate` SIGKILLed while it loads the model (its partial file already holds the
    header, no record): the same command then runs to the end; the file equals an
    uninterrupted run's."""
    from samgpu import cli

    src = prompts_file([{"id": i, "prompt": f"Say {i}."} for i in range(3)])
    out, ref = tmp_path / "out.jsonl", tmp_path / "ref.jsonl"
    args = ["generate", "--model", str(tiny_model_dir), "--method", "ar", "--device", "cpu",
            "--max-new-tokens", "4", "--no-progress", "--raw", "--input", str(src)]  # fmt: skip
    proc = python("from samgpu.cli import main; import sys; sys.exit(main(sys.argv[1:]))",
                  *args, "--output", str(out))  # fmt: skip
    partial = partial_of(out)
    deadline = time.time() + 120
    while not (partial.exists() and partial.read_bytes().endswith(b"\n")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert partial.read_bytes().count(b"\n") == 1 and not out.exists()  # header only

    assert cli.main([*args, "--output", str(out)]) == 0
    assert cli.main([*args, "--output", str(ref)]) == 0

    def texts(path):
        return [(r["id"], r["completion"], r["finish_reason"]) for r in lines(path)]

    assert texts(out) == texts(ref) and [i for i, _, _ in texts(out)] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))) == [
        "out.jsonl",
        "out.jsonl.samgpu.json",
    ]


def test_file_system_without_flock_warns_and_goes_on(tmp_path, monkeypatch):
    """ENOLCK (e.g. an NFS mount without lock support) is not "another process": a warning,
    and the run proceeds unprotected, rather than a refusal naming nobody."""
    import errno

    from samgpu import io

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(io.fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot lock"):
        w = OutputWriter.open(tmp_path / "out.jsonl", SETTINGS)
    w.add_many([(0, {"c": 0})])
    w.finalize(1)
    assert lines(tmp_path / "out.jsonl") == [{"c": 0}]
