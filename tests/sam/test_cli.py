"""`samgpu index build|stats`: one JSON line of stats, clear errors, the embedded default index
(cached per tokenizer under $SAMGPU_CACHE)."""

from __future__ import annotations

import argparse
import json

import pytest

from samgpu.sam import SamIndex, build_default_index, default_index_path, tokenizer_fingerprint
from samgpu.sam.cli import add_index_parser, run_index

from .fake_tokenizer import WordTokenizer


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="samgpu")
    add_index_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["index", *argv])


def run(capsys, *argv, tokenizer=None):
    tok = tokenizer or WordTokenizer()
    code = run_index(parse(*argv), load_tokenizer=lambda name: tok)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"question": f"what is {i} plus {i}", "answer": f"it is {2 * i}"} for i in range(50)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMGPU_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_build_then_stats(capsys, corpus, tmp_path):
    out_path = tmp_path / "c.samidx"
    code, out, err = run(capsys, "build", "--corpus", str(corpus), "--out", str(out_path))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    # 50 records of 5 + 3 words, each followed by EOS; then 4096 singletons (EOS alone once).
    assert stats["corpus_tokens"] == 50 * 9
    assert stats["tokens"] == 50 * 9 + 2 * 4096 - 1
    assert stats["path"] == str(out_path) and stats["build_tokens_per_s"] > 0
    index = SamIndex.load(out_path)
    assert index.tokenizer_fingerprint == tokenizer_fingerprint(WordTokenizer())
    tok = WordTokenizer()
    q = tok(["what is 7 plus 7 it is"], add_special_tokens=False)["input_ids"][0]
    assert index.longest_match(q)[0] == len(q)

    code, out, err = run(capsys, "stats", str(out_path))
    assert code == 0, err
    again = json.loads(out)
    assert (again["tokens"], again["states"], again["edges"]) == (
        stats["tokens"],
        stats["states"],
        stats["edges"],
    )
    assert again["checksums"] == "ok" and again["file_bytes"] == out_path.stat().st_size


def test_fields_option(capsys, corpus, tmp_path):
    out_path = tmp_path / "a.samidx"
    code, out, _ = run(
        capsys, "build", "--corpus", str(corpus), "--fields", "answer", "--out", str(out_path)
    )
    assert code == 0
    assert json.loads(out)["corpus_tokens"] == 50 * 4  # "it is N" + EOS


def test_errors_are_one_line(capsys, corpus, tmp_path):
    code, _, err = run(capsys, "build", "--corpus", str(tmp_path / "none.jsonl"), "--out", "x")
    assert code == 2 and err.startswith("samgpu: error:") and "does not exist" in err
    code, _, err = run(capsys, "build", "--corpus", str(corpus))
    assert code == 2 and "--out is required" in err
    code, _, err = run(capsys, "build", "--corpus", str(corpus), "--fields", "nope", "--out", "x")
    assert code == 2 and "empty corpus" in err
    code, _, err = run(capsys, "stats", str(tmp_path / "none.samidx"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "stats", str(tmp_path))
    assert code == 2 and "is a folder" in err
    code, _, err = run(capsys, "build", "--corpus", str(corpus), "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err
    assert len(err.strip().splitlines()) == 1


def test_build_never_writes_over_the_corpus_or_another_file(capsys, corpus, tmp_path):
    """--out on the corpus (it was replaced by the index) or on a file that is not an index is
    refused; a folder as corpus is named as such. Control: over an index it rebuilds."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    kept = {p: p.read_bytes() for p in (corpus, notes)}
    for argv, match in (
        (("--corpus", corpus, "--out", corpus), "is the corpus file"),
        (("--corpus", corpus, "--out", notes), "is not a samgpu index"),
        (("--corpus", tmp_path, "--out", tmp_path / "x.samidx"), "is a folder"),
    ):
        code, _, err = run(capsys, "build", *map(str, argv))
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert all(p.read_bytes() == data for p, data in kept.items())
    index = tmp_path / "c.samidx"
    for _ in range(2):
        code, _, err = run(capsys, "build", "--corpus", str(corpus), "--out", str(index))
        assert code == 0, err


def test_default_index_is_built_once_and_cached(capsys, cache):
    tok = WordTokenizer()
    code, out, err = run(capsys, "build", "--no-progress", tokenizer=tok)
    assert code == 0, err
    stats = json.loads(out)
    path = default_index_path(tokenizer_fingerprint(tok))
    assert stats["path"] == str(path) and path.parent == cache
    assert stats["corpus"] == "samgpu-default-corpus-v1" and stats["corpus_tokens"] > 1_000_000
    mtime = path.stat().st_mtime_ns
    code, out, err = run(capsys, "build", "--no-progress", tokenizer=tok)
    assert code == 0 and json.loads(out)["cached"] is True
    assert build_default_index(tok, progress=False) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    # A corrupt cached file is rebuilt rather than trusted.
    path.write_bytes(b"garbage")
    assert build_default_index(tok, progress=False) == path
    SamIndex.load(path).check_tokenizer(tokenizer_fingerprint(tok))


def test_samgpu_cli_wires_index_commands(capsys, corpus, tmp_path):
    """Through the top-level `samgpu` entry point, with the real default tokenizer when present."""
    from samgpu import cli

    try:
        from samgpu.models import load_default_tokenizer

        tokenizer = load_default_tokenizer()
    except (FileNotFoundError, ImportError, OSError) as exc:
        pytest.skip(f"default tokenizer unavailable: {exc}")
    out_path = tmp_path / "real.samidx"
    code = cli.main(["index", "build", "--corpus", str(corpus), "--out", str(out_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["vocab_size"] == len(tokenizer)
    assert stats["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    index = SamIndex.load(out_path)
    q = tokenizer("what is 7 plus 7", add_special_tokens=False)["input_ids"]
    assert index.longest_match(q)[0] == len(q)
    assert cli.main(["index", "stats", str(out_path)]) == 0
    assert json.loads(capsys.readouterr().out)["states"] == stats["states"]


def _break_tokens(path) -> None:
    """tokens[0] := 4095 + 1 (outside the 4096-id vocabulary), checksums recomputed: the header
    still says "current default index", the values lie."""
    import struct
    import zlib

    from samgpu.sam import read_header

    data = bytearray(path.read_bytes())
    meta = read_header(path)
    entry = next(e for e in meta["arrays"] if e["name"] == "tokens")
    assert entry["dtype"] == "uint16"
    data[entry["offset"] : entry["offset"] + 2] = struct.pack("<H", 4096)
    entry["crc32"] = zlib.crc32(data[entry["offset"] : entry["offset"] + 2 * entry["count"]])
    header = json.dumps(meta, sort_keys=True).encode()
    assert 20 + len(header) <= meta["arrays"][0]["offset"]
    data[:20] = struct.pack("<8sIII", data[:8], 2, len(header), zlib.crc32(header))
    data[20 : 20 + len(header)] = header
    path.write_bytes(bytes(data))


def test_damaged_cached_default_index_is_rebuilt(capsys, cache, corpus, monkeypatch):
    """The cache is samgpu's own: a cached default index that fails validation is rebuilt (with
    a warning) by the generate path and by `index build`, instead of failing every run."""
    from samgpu.sam import default, load_default_index

    monkeypatch.setattr(default, "default_corpus_paths", lambda: [corpus])  # 3 builds: keep small
    tok = WordTokenizer()
    path = build_default_index(tok, progress=False)
    _break_tokens(path)
    with pytest.raises(ValueError, match=r"tokens\[0\] = 4096"):  # control: the damage is real
        SamIndex.load(path)
    with pytest.warns(UserWarning, match="rebuilding the cached default index"):
        index = load_default_index(tok, progress=False)
    assert index.tokens[0] != 4096 and SamIndex.load(path).equal(index)
    _break_tokens(path)
    code, out, err = run(capsys, "build", "--no-progress", tokenizer=tok)
    assert code == 0 and "rebuilding" in err, err
    SamIndex.load(path)


def test_stats_runs_the_deep_validation(capsys, corpus, tmp_path):
    out_path = tmp_path / "c.samidx"
    assert run(capsys, "build", "--corpus", str(corpus), "--out", str(out_path))[0] == 0
    code, out, err = run(capsys, "stats", str(out_path))
    assert code == 0 and json.loads(out)["structure"] == "ok", err
    index = SamIndex.load(out_path)
    leaf = next(s for s in range(1, index.num_states) if s not in set(index.link.tolist()))
    index.count[leaf] += 1  # counts no longer the link-tree sums: only the deep level sees it
    index.save(out_path)
    SamIndex.load(out_path)  # the fast level (every load) accepts
    code, out, err = run(capsys, "stats", str(out_path))
    assert code == 2 and "fails the deep validation" in err and "count" in err, err


def test_records_without_the_fields_are_counted_and_warned(capsys, tmp_path):
    """A mixed corpus whose records keep their text under another field ("text") lost them
    without a word: the build warns with the count (and records it)."""
    path = tmp_path / "mixed.jsonl"
    rows = [{"text": "lost words here"}, {"question": "what is one", "answer": "it is one"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, out, err = run(capsys, "build", "--corpus", str(path), "--out", str(tmp_path / "m.idx"))
    assert code == 0 and "1 record(s) have none of the fields" in err
    assert json.loads(out)["records_without_fields"] == 1
    code, out, err = run(
        capsys, "build", "--corpus", str(path), "--out", str(tmp_path / "t.idx"), "--fields", "text"
    )
    assert code == 0 and json.loads(out)["records_without_fields"] == 1 and "warning" in err
