"""Corpus reading (JSON, JSONL, text, gzipped), record fields, clear errors, tokenizer fingerprint,
and the shipped default corpus."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from samgpu.sam import (
    DEFAULT_FIELDS,
    default_corpus_paths,
    read_texts,
    token_docs,
    tokenizer_fingerprint,
)

from .fake_tokenizer import WordTokenizer


def test_jsonl_json_text_and_gzip(tmp_path):
    jl = tmp_path / "a.jsonl"
    jl.write_text(
        json.dumps({"question": "2+2?", "answer": "4"})
        + "\n\n"
        + json.dumps({"instruction": "Say hi", "input": "", "response": "hi"})
        + "\n"
    )
    js = tmp_path / "b.json.gz"
    with gzip.open(js, "wt") as f:
        json.dump([{"instruction": "I", "input": "X", "output": "O"}, "a bare string"], f)
    tx = tmp_path / "c.txt"
    tx.write_text("plain text\nfile")
    assert list(read_texts([jl, js, tx])) == [
        "2+2?\n4",
        "Say hi\nhi",
        "I\nX\nO",
        "a bare string",
        "plain text\nfile",
    ]


def test_fields_choose_and_order_the_text(tmp_path):
    jl = tmp_path / "a.jsonl"
    jl.write_text(json.dumps({"question": "q", "answer": "a", "other": "z"}) + "\n")
    assert list(read_texts([jl], fields=["answer", "other"])) == ["a\nz"]
    assert list(read_texts([jl], fields=["missing"])) == []  # nothing to index: skipped
    assert DEFAULT_FIELDS.index("question") < DEFAULT_FIELDS.index("answer")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"question": "ok"}\n{"question": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: malformed JSON"):
        list(read_texts([jl]))


def test_malformed_json_and_bad_records(tmp_path):
    js = tmp_path / "bad.json"
    js.write_text('[{"a": 1},')
    with pytest.raises(ValueError, match=r"bad\.json: malformed JSON"):
        list(read_texts([js]))
    js.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad\.json, record 0: a record must be a JSON object"):
        list(read_texts([js]))


def test_missing_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list(read_texts([tmp_path / "nope.jsonl"]))
    gz = tmp_path / "broken.jsonl.gz"
    gz.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="cannot be read"):
        list(read_texts([gz]))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        list(read_texts([latin]))
    with pytest.raises(ValueError, match="at least one"):
        list(read_texts([latin], fields=[]))


def test_token_docs_batches_and_keeps_order():
    calls = []

    def encode_batch(texts):
        calls.append(len(texts))
        return [[len(t)] * len(t) for t in texts]

    docs = list(token_docs(["a", "bb", "ccc"], encode_batch, batch_size=2))
    assert calls == [2, 1]
    assert [d.tolist() for d in docs] == [[1], [2, 2], [3, 3, 3]]
    assert all(d.dtype == np.int32 for d in docs)


def test_fingerprint_is_stable_and_sensitive():
    a, b = WordTokenizer(), WordTokenizer()
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    assert len(tokenizer_fingerprint(a)) == 64
    b.extra_vocab = {"<new>": 5000}  # one more token
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
    c = WordTokenizer()
    c.all_special_tokens = ["<eos>", "<pad>"]
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(c)

    class VocabOnly:  # duck typing: get_vocab() is enough
        def get_vocab(self):
            return {"x": 0, "y": 1}

    class Reordered:
        def get_vocab(self):
            return {"y": 1, "x": 0}

    assert tokenizer_fingerprint(VocabOnly()) == tokenizer_fingerprint(Reordered())


def test_shipped_corpus_is_present_with_licences():
    paths = default_corpus_paths()
    assert [p.name for p in paths] == [
        "gsm8k_train.jsonl.gz",
        "gpteacher_codegen-instruct.json.gz",
        "gpteacher_roleplay-simple-deduped-roleplay-instruct.json.gz",
    ]
    folder = paths[0].parent
    assert (folder / "LICENSE.grade-school-math").is_file()
    assert (folder / "LICENSE.GPTeacher").is_file()
    assert not list(folder.glob("*alpaca*"))  # CC BY-NC data is not shipped
    with gzip.open(paths[0], "rt") as f:
        first = json.loads(f.readline())
    assert set(first) == {"question", "answer"}


def test_deeply_nested_json_is_a_clean_error(tmp_path):
    """Nesting beyond the recursion limit: one ValueError naming the file (and line)."""
    deep = "[" * 100_000 + "]" * 100_000
    jl = tmp_path / "deep.jsonl"
    jl.write_text('{"question": "ok"}\n' + deep + "\n")
    with pytest.raises(ValueError, match=r"deep\.jsonl, line 2: JSON nested too deeply"):
        list(read_texts([jl]))
    js = tmp_path / "deep.json"
    js.write_text(deep)
    with pytest.raises(ValueError, match=r"deep\.json: JSON nested too deeply"):
        list(read_texts([js]))
    jl.write_text('{"question": "ok", "answer": ' + "[" * 50 + "]" * 50 + "}\n")  # control
    assert list(read_texts([jl])) == ["ok\n" + "[" * 50 + "]" * 50]


def test_gzip_size_trailer_is_not_trusted(tmp_path):
    """A .gz whose ISIZE trailer claims 4 GB (a 111-byte file asked the build for ~48 GB): the
    size hint is capped by the compressed size, and reading the file is a clean error."""
    from samgpu.sam.default import GZIP_MAX_RATIO, _text_bytes, build_index_from_files

    path = tmp_path / "lie.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"question": "what is 2 plus 2", "answer": "4"}\n')
    honest = _text_bytes(path)
    assert honest == len('{"question": "what is 2 plus 2", "answer": "4"}\n')  # control
    data = bytearray(path.read_bytes())
    data[-4:] = (2**32 - 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert _text_bytes(path) == GZIP_MAX_RATIO * len(data)
    with pytest.raises(ValueError, match=r"lie\.jsonl\.gz cannot be read"):
        build_index_from_files([path], WordTokenizer())
