"""The Python API as the README shows it (issue 14, item 9): the README's SamDecoder example runs as
written on the embedded default on a CPU, `SamDecoder.from_pretrained` loads a checkpoint, and
`samgpu.generate` loads a model once however many methods it is called with."""

import re
from pathlib import Path

import pytest
import torch

import samgpu
from samgpu import api, oneshot
from samgpu.api import SamDecoder

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_python_example() -> str:
    text = README.read_text()
    section = text[text.index("**Python.**") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_on_the_default_model_on_cpu(capsys):
    """The example (it used an undefined `path` and `.cuda()`) runs verbatim, and its greedy ids
    equal transformers `generate`'s in float32."""
    code = readme_python_example()
    assert "path" not in code.split("#")[0] and ".cuda()" not in code
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    texts = capsys.readouterr().out
    assert texts.strip() and "mat" in texts
    model, batch, out = scope["model"], scope["batch"], scope["out"]
    want = model.generate(**batch, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, want)


def test_from_pretrained_loads_a_checkpoint(tiny_model_dir):
    dec = SamDecoder.from_pretrained(str(tiny_model_dir), method="ar", device="cpu")
    assert dec.model.dtype == torch.float32 and dec.tokenizer is not None
    (text,) = dec.generate(["Hello"], max_new_tokens=3)
    assert isinstance(text, str)


def test_one_model_load_for_every_method(monkeypatch, tiny_model_dir):
    """samgpu.generate(..., method=m) for two methods loads the model once (it reloaded it for
    each method), and the same method again reuses its decoder."""
    oneshot._cached_model.cache_clear()
    loads = []
    real = api.load_model

    def counting(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "load_model", counting)
    kw = dict(model=str(tiny_model_dir), max_new_tokens=3, device="cpu", raw=True)
    a = samgpu.generate("Hello", method="ar", **kw)
    b = samgpu.generate("Hello", method="pld", **kw)
    assert loads == [str(tiny_model_dir)]
    assert a.text == b.text  # greedy, float32: lossless
    model, tok = oneshot._cached_model(str(tiny_model_dir), "cpu", "auto")
    first = oneshot._cached_decoder(model, tok, "ar", "default", {})
    assert oneshot._cached_decoder(model, tok, "ar", "default", {}) is first
    oneshot._cached_model.cache_clear()


def test_loaded_model_decoders_are_reused(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    samgpu.generate("Hi", model=model, tokenizer=tok, method="ar", max_new_tokens=2, raw=True)
    (decoder,) = oneshot._DECODERS[model].values()
    samgpu.generate("Hi", model=model, tokenizer=tok, method="ar", max_new_tokens=2, raw=True)
    assert list(oneshot._DECODERS[model].values()) == [decoder]
    with pytest.raises(ValueError, match="tokenizer="):
        samgpu.generate("Hi", model=model, method="ar")


def test_one_liner_argument_errors_are_plain(tiny_model_dir):
    """What a user can get wrong in samgpu.generate is one TypeError / ValueError naming it,
    before any model work: a single message dict (it ran as two prompts, "role" and "content"),
    a conversation without roles, counts that are floats or below 1 (batch_size=0 ran as if
    unset), an empty stop string (it returned empty text "stopped"). Control: the same call with
    valid arguments runs; an empty list after a call returns [] (it raised on stale stats)."""
    kw = dict(model=str(tiny_model_dir), method="ar", device="cpu", raw=True)
    bad = [
        (({"role": "user", "content": "hi"},), {}, TypeError, "prompts must be"),
        (([[{"content": "hi"}]],), {}, TypeError, "role"),
        (("Hi",), {"max_new_tokens": 2.5}, TypeError, "max_new_tokens must be an int"),
        (("Hi",), {"max_new_tokens": True}, TypeError, "max_new_tokens must be an int"),
        ((["Hi"],), {"batch_size": 0}, ValueError, "batch_size=0 must be >= 1"),
        (("Hi",), {"stop": ""}, ValueError, "stop strings must be non-empty"),
        (("Hi",), {"stop": 5}, TypeError, "stop must be"),
        (("Hi",), {"temperature": "0.5"}, TypeError, "temperature must be a number"),
        (("Hi",), {"seed": "a"}, TypeError, "seed must be an int"),
    ]
    for args, extra, exc, match in bad:
        with pytest.raises(exc, match=match):
            samgpu.generate(*args, **{"max_new_tokens": 2, **kw, **extra})
    assert samgpu.generate("Hi", max_new_tokens=2, stop="zz", **kw).text is not None
    assert samgpu.generate([], max_new_tokens=2, **kw) == []


def test_generate_ids_checks_its_counts_and_clears_stats(tiny_model_dir):
    dec = SamDecoder.from_pretrained(str(tiny_model_dir), method="ar", device="cpu")
    dec.generate_ids([[1, 2, 3]], max_new_tokens=2)
    assert len(dec.last_stats) == 1
    assert dec.generate_ids([], max_new_tokens=2).tokens == [] and dec.last_stats == []
    for kwargs, exc in (
        ({"max_new_tokens": 0}, ValueError),
        ({"max_new_tokens": 2, "batch_size": -1}, ValueError),
        ({"max_new_tokens": 2, "batch_size": 1.5}, TypeError),
    ):
        with pytest.raises(exc):
            dec.generate_ids([[1, 2, 3]], **kwargs)
    with pytest.raises(TypeError, match="token ids"):
        dec.generate_ids(["abc"], max_new_tokens=2)


def test_decoder_of_a_name_points_to_from_pretrained():
    with pytest.raises(TypeError, match="from_pretrained"):
        SamDecoder("default", None)


def test_a_store_picks_an_automaton_method_on_a_cpu(tiny_model_dir, tmp_path):
    """method=None with a store: "merged", not the CPU's "ar", which has no store option (a
    ValueError "unknown option(s) ['store'] for method 'ar'" before)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert SamDecoder(model, None, index=None).method == "ar"  # control
    dec = SamDecoder(model, None, index=None, store=str(tmp_path / "s.samstore"))
    assert dec.method == "merged"


def test_decoder_refuses_a_conversation_without_roles(tiny_model_dir):
    dec = SamDecoder.from_pretrained(str(tiny_model_dir), method="ar", device="cpu")
    with pytest.raises(TypeError, match="'role', 'content'"):
        dec.generate([[{"content": "hi"}]], max_new_tokens=2)
    with pytest.raises(TypeError, match="'role', 'content'"):
        dec.generate([[]], max_new_tokens=2)
    # content parts (a list) or None: named, not a jinja traceback
    for content in ([{"type": "text", "text": "hi"}], None):
        with pytest.raises(TypeError, match="with string values"):
            dec.generate([[{"role": "user", "content": content}]], max_new_tokens=2)


def test_chat_records_need_string_contents():
    from samgpu.errors import InputError
    from samgpu.inputs import parse_record

    msgs = [{"role": "user", "content": "hi"}]
    assert parse_record({"messages": msgs}, index=0, line=1).messages == msgs  # control
    with pytest.raises(InputError, match="x.jsonl:3: messages\\[0\\]: 'role' and 'content' must"):
        parse_record({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
                     index=0, line=3, path="x.jsonl")  # fmt: skip


def test_index_of_a_wrong_type_is_named(tiny_model_dir):
    """(pathlib's "expected str, bytes or os.PathLike object, not int" before)"""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with pytest.raises(TypeError, match="index must be"):
        SamDecoder(model, None, method="sam", index=123)
