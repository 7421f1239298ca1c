"""JSONL input parsing (errors name file and line) and the resumable, atomic output writer."""

import json

import pytest

from samgpu.errors import InputError, UserError
from samgpu.io import OutputWriter, parse_record, read_records


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_prompt_text_and_messages_fields(tmp_path):
    """`prompt` wins over `text`; `messages` is a chat; a bare string line is a prompt; blank lines
    are skipped but still counted for line numbers."""
    f = write(
        tmp_path / "in.jsonl",
        [
            '{"id": 7, "prompt": "a", "text": "b"}',
            '{"text": "b"}',
            "",
            '{"messages": [{"role": "user", "content": "hi"}]}',
            '"bare"',
        ],
    )
    recs = read_records(f)
    assert [r.index for r in recs] == [0, 1, 2, 3]
    assert [r.line for r in recs] == [1, 2, 4, 5]
    assert [r.prompt for r in recs] == ["a", "b", None, "bare"]
    assert recs[2].messages == [{"role": "user", "content": "hi"}]
    assert recs[0].data["id"] == 7


def test_custom_field(tmp_path):
    f = write(tmp_path / "in.jsonl", ['{"question": "why?"}', '{"question": "how?"}'])
    assert [r.prompt for r in read_records(f, field="question")] == ["why?", "how?"]
    with pytest.raises(
        InputError, match=r"in.jsonl:1: .*no 'prompt', 'text' or 'messages'.*--field"
    ):
        read_records(f)


@pytest.mark.parametrize(
    "lines, pattern",
    [
        (['{"prompt": "a"}', '{"prompt": "b",}'], r"in.jsonl:2: not valid JSON"),
        (['{"prompt": "a"}', "[1, 2]"], r"in.jsonl:2: expected a JSON object, got list"),
        (['{"prompt": 3}'], r"in.jsonl:1: field 'prompt' must be a string"),
        (['{"messages": [{"role": "user"}]}'], r"in.jsonl:1: messages\[0\] must be an object"),
        (['{"messages": "hi"}'], r"in.jsonl:1: field 'messages' must be a non-empty list"),
        ([""], r"has no records"),
    ],
    ids=["bad-json", "not-object", "non-string", "bad-message", "messages-not-list", "empty-file"],
)
def test_malformed_input_names_the_line(tmp_path, lines, pattern):
    f = write(tmp_path / "in.jsonl", lines)
    with pytest.raises(InputError, match=pattern):
        read_records(f)


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="is a directory"):
        read_records(tmp_path)
    (tmp_path / "bin.jsonl").write_bytes(b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(InputError, match="not UTF-8"):
        read_records(tmp_path / "bin.jsonl")


def test_empty_prompt_is_flagged():
    assert parse_record({"prompt": "  "}, index=0, line=1).is_empty
    assert parse_record({"messages": [{"role": "user", "content": ""}]}, index=0, line=1).is_empty
    assert not parse_record({"prompt": "x"}, index=0, line=1).is_empty


def test_writer_resumes_and_finalizes_in_input_order(tmp_path):
    """Run 1 finishes records 2 and 0 then dies (torn last line); run 2 sees both, finishes 1, and
    the final file lists 0, 1, 2 in input order; the partial file is gone."""
    out = tmp_path / "out.jsonl"
    settings = {"input": "abc", "max_new_tokens": 4}
    w = OutputWriter.open(out, settings)
    w.add_many([(2, {"c": 2}), (0, {"c": 0})])
    w.close()
    with open(out.with_name("out.jsonl.partial"), "a") as f:
        f.write('{"index": 1, "rec')  # crash mid-line
    assert not out.exists()

    w = OutputWriter.open(out, settings)
    assert sorted(w.done) == [0, 2]
    w.add_many([(1, {"c": 1})])
    w.finalize(3)
    assert [json.loads(x)["c"] for x in out.read_text().splitlines()] == [0, 1, 2]
    assert not out.with_name("out.jsonl.partial").exists()
    assert not out.with_name("out.jsonl.tmp").exists()


def test_writer_refuses_other_settings_and_complete_output(tmp_path):
    out = tmp_path / "out.jsonl"
    w = OutputWriter.open(out, {"max_new_tokens": 4})
    w.add_many([(0, {"c": 0})])
    w.close()
    with pytest.raises(UserError, match=r"max_new_tokens: 4 -> 8.*--overwrite"):
        OutputWriter.open(out, {"max_new_tokens": 8})
    w = OutputWriter.open(out, {"max_new_tokens": 8}, overwrite=True)
    assert w.done == {}
    w.add_many([(0, {"c": 0})])
    with pytest.raises(RuntimeError, match="unfinished"):
        w.finalize(2)
    w.finalize(1)
    with pytest.raises(UserError, match="already exists") as e:
        OutputWriter.open(out, {"max_new_tokens": 8})
    assert e.value.exit_code == 0


def test_header_only_partial_of_other_settings_restarts(tmp_path):
    """Killed during start-up, then re-run with other settings: no record is lost by starting
    over, so the run goes ahead (with a record, the same change is refused: the test above)."""
    out = tmp_path / "out.jsonl"
    OutputWriter.open(out, {"max_new_tokens": 4}).close()
    with OutputWriter.open(out, {"max_new_tokens": 8}) as w:
        assert w.done == {}
    header = json.loads(out.with_name("out.jsonl.partial").read_text())
    assert header["settings"] == {"max_new_tokens": 8}


def test_writer_is_a_context_manager_and_close_is_idempotent(tmp_path):
    out = tmp_path / "out.jsonl"
    with OutputWriter.open(out, {"a": 1}) as w:
        w.append(0, {"c": 0})
        assert out.with_name("out.jsonl.lock").exists()
    w.close()
    assert not out.with_name("out.jsonl.lock").exists()  # released and removed
    with pytest.raises(RuntimeError, match="closed"):
        w.add(1, {"c": 1})
    with OutputWriter.open(out, {"a": 1}) as again:
        assert again.done == {0: {"c": 0}}


def test_final_file_has_a_fingerprint_that_decides_done_or_refused(tmp_path):
    """finalize writes <out>.samgpu.json (settings, count, summary, SHA-256) before <out>;
    check_final: same settings and file -> OutputComplete (exit 0, with the summary); other
    settings, an edited file, a missing fingerprint -> UserError (exit 2) naming the fix."""
    from samgpu.io import OutputComplete, check_final

    out = tmp_path / "out.jsonl"
    check_final(out, {"n": 1})  # nothing there: nothing to say
    with OutputWriter.open(out, {"n": 1}) as w:
        w.add_many([(0, {"c": 0}), (1, {"c": 1})])
        w.finalize(2, {"num_skipped": 1})
    meta = json.loads(out.with_name("out.jsonl.samgpu.json").read_text())
    assert meta["num_records"] == 2 and meta["summary"] == {"num_skipped": 1}
    with pytest.raises(OutputComplete) as e:
        check_final(out, {"n": 1})
    assert e.value.exit_code == 0 and e.value.meta["summary"] == {"num_skipped": 1}
    with pytest.raises(UserError, match=r"another input or settings \(n: 1 -> 2\).*--overwrite"):
        check_final(out, {"n": 2})
    out.write_text(out.read_text().replace('"c": 1', '"c": 9'))
    with pytest.raises(UserError, match="changed after samgpu finished it") as e:
        check_final(out, {"n": 1})
    assert e.value.exit_code == 2
    out.with_name("out.jsonl.samgpu.json").unlink()
    with pytest.raises(UserError, match="not as a finished samgpu output"):
        OutputWriter.open(out, {"n": 1})


def test_crash_between_the_two_renames_resumes(tmp_path, monkeypatch):
    """The fingerprint is renamed into place first: a crash before the final file's rename leaves
    the partial file, and the same settings finish it; a fingerprint without its file is stale."""
    from samgpu import io

    out = tmp_path / "out.jsonl"
    w = OutputWriter.open(out, {"n": 1})
    w.add_many([(0, {"c": 0})])
    real = io._replace_durably
    calls = []

    def crash_on_the_second(dest, data):
        calls.append(dest.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(dest, data)

    monkeypatch.setattr(io, "_replace_durably", crash_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        w.finalize(1)
    w.close()
    monkeypatch.setattr(io, "_replace_durably", real)
    assert calls == ["out.jsonl.samgpu.json", "out.jsonl"] and not out.exists()
    with OutputWriter.open(out, {"n": 1}) as w:
        assert w.done == {0: {"c": 0}}
        assert not out.with_name("out.jsonl.samgpu.json").exists()
        w.finalize(1)
    assert out.read_text() == '{"c": 0}\n'


def test_failed_set_up_discards_an_unstarted_partial(tmp_path):
    out = tmp_path / "out.jsonl"
    OutputWriter.open(out, {"n": 1}).close(discard_unstarted=True)
    assert list(tmp_path.iterdir()) == []
    with OutputWriter.open(out, {"n": 1}) as w:  # control: a partial with a record is kept
        w.add_many([(0, {"c": 0})])
    OutputWriter.open(out, {"n": 1}).close(discard_unstarted=True)
    assert out.with_name("out.jsonl.partial").exists()
