"""`samgpu store build|stats` (samgpu/cli/store.py) with the default tokenizer: documents as a live
run stores them (EOS after "eos" responses, prompts encoded as `generate` does with
--with-prompts), skipped records left out, the budget's eviction, --append, stats, the file loads
into a drafter; bad input is one error line and exit status 2."""

import argparse
import json

import pytest

from samgpu.cli.store import add_store_parser, run_store
from samgpu.drafters.parts.store_file import read_store_file

RECORDS = [
    {"prompt": "Name a prime.", "completion": "Seven.", "finish_reason": "eos"},
    {"prompt": "", "completion": None, "finish_reason": "skipped", "error": "empty prompt"},
    {
        "messages": [{"role": "user", "content": "Say hi."}],
        "completion": "Hi there",
        "finish_reason": "length",
    },
]


def _run(capsys, *argv):
    parser = argparse.ArgumentParser(prog="samgpu")
    add_store_parser(parser.add_subparsers(dest="command"))
    code = run_store(parser.parse_args(["store", *map(str, argv)]))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tokenizer():
    from samgpu.models import load_default_tokenizer

    return load_default_tokenizer()


def test_build_stats_and_load(tmp_path, capsys, tokenizer):
    src = tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    store = tmp_path / "run.samstore"
    code, out, err = _run(capsys, "build", "--input", src, "--out", store)
    assert code == 0, err
    line = json.loads(out)
    assert (line["documents"], line["skipped_records"], line["dropped"]) == (2, 1, 0)
    docs = [d.tolist() for d in read_store_file(store).documents()]
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    plain = [enc("Seven.") + [tokenizer.eos_token_id], enc("Hi there")]
    assert docs == plain

    code, out, err = _run(capsys, "build", "--input", src, "--out", store, "--with-prompts")
    assert code == 0, err
    docs = [d.tolist() for d in read_store_file(store).documents()]
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi."}], add_generation_prompt=True, tokenize=False
    )
    assert docs[1] == enc(chat) + enc("Hi there")

    code, out, err = _run(capsys, "build", "--input", src, "--out", store, "--append")
    assert code == 0 and json.loads(out)["documents"] == 4
    extra = read_store_file(store).extra  # --append extends the build record, not replaces it
    assert extra["built_from"] == [str(src), str(src)] and extra["store_prompts"] == "mixed"
    before = [d.tolist() for d in read_store_file(store).documents()]
    argv = ("build", "--input", src, "--out", store, "--append", "--store-tokens", 16)
    code, out, err = _run(capsys, *argv)
    line = json.loads(out)
    assert code == 0 and line["dropped"] > 0 and line["documents"] + line["dropped"] == 6
    kept = [d.tolist() for d in read_store_file(store).documents()]
    assert kept == (before + plain)[line["dropped"] :]  # the newest survive

    code, out, err = _run(capsys, "stats", store)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["documents"] == len(kept) and stats["checksums"] == "ok"
    assert stats["tokenizer_fingerprint"]

    from samgpu.drafters import build_drafter, store_of

    drafter = build_drafter(
        "sam+tr", vocab_size=49152, max_reqs=1, max_len=64, device="cpu", store=str(store),
        store_tokens=1 << 10,
    )  # fmt: skip
    assert store_of(drafter).num_loaded == len(kept)


def test_empty_responses_are_counted_as_skipped(tmp_path, capsys):
    """A response with no text and no EOS stores nothing: it is a skipped record in the report
    (it vanished uncounted)."""
    src = tmp_path / "out.jsonl"
    recs = [RECORDS[0], {"prompt": "p", "completion": "", "finish_reason": "length"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    code, out, err = _run(capsys, "build", "--input", src, "--out", tmp_path / "s.samstore")
    line = json.loads(out)
    assert code == 0 and (line["documents"], line["skipped_records"]) == (1, 1), err


def test_bad_input_is_one_error_line(tmp_path, capsys):
    store = tmp_path / "s.samstore"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"completion": "x"}\nnot json\n')
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"completion": 3}\n')
    prompts_only = tmp_path / "prompts.jsonl"
    prompts_only.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    other = tmp_path / "notes.bin"
    other.write_bytes(b"someone else's file")
    kept = {p: p.read_bytes() for p in (good, other)}
    for argv, match in (
        (("build", "--input", good, "--out", good), "is the input file"),
        (("build", "--input", good, "--out", other), "is not a samgpu store"),
        (("build", "--input", tmp_path, "--out", store), "is a folder"),
        (("build", "--input", good, "--out", store, "--prompt-field", "q"), "--with-prompts"),
        (("build", "--input", good, "--out", store, "--store-tokens", 10**13), "largest store"),
        (("build", "--input", prompts_only, "--out", store), "no response to store"),
        (("build", "--input", tmp_path / "missing.jsonl", "--out", store), "does not exist"),
        (("build", "--input", bad, "--out", store), "bad.jsonl:2: not valid JSON"),
        (("build", "--input", wrong, "--out", store), "must be a string"),
        (("build", "--input", bad, "--out", tmp_path), "is a folder"),
        (("stats", tmp_path / "none.samstore"), "does not exist"),
        (("stats", tmp_path), "is a folder"),
        (("stats", bad), "not a samgpu store file"),
    ):
        code, out, err = _run(capsys, *argv)
        lines = [x for x in err.splitlines() if x.startswith("samgpu: error:")]
        assert code == 2 and len(lines) == 1 and match in lines[0], (argv, err)
        assert "Traceback" not in err
        if argv[0] == "stats":  # (the user's own files: never advice to delete them)
            assert "delete" not in lines[0], lines[0]
    assert not store.exists()
    assert all(p.read_bytes() == data for p, data in kept.items())  # never written over
