"""What the API reports and refuses at its edges: finish reasons and text at stop strings and at
the length limit, arguments of the wrong type (one TypeError naming the argument, before any
buffer is allocated), and model.generation_config in samgpu.generate. Uses the tiny random Llama
with the default tokenizer (tests/api/fixtures.py)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import samgpu
from samgpu.api import SamDecoder, make_completion
from samgpu.completions import REPLACEMENT_CHAR


@pytest.fixture
def tiny(tiny_model_dir):
    """A fresh model per test: the tests change its generation_config."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_a_stop_string_inside_the_eos_token_is_not_a_stop(tiny):
    """A response ended by the model's EOS (<|im_end|>) is "eos" whatever the stop strings: the
    stop search reads the text without special tokens, as the completion's text is (it found
    "im_end" and "<|im_end|>" in the EOS token's own text and said "stop"). A stop string in the
    text, and a special token other than the EOS given as a stop, still stop."""
    _, tok = tiny
    eos = (tok.eos_token_id,)
    hello = tok("Hello there", add_special_tokens=False).input_ids
    for stop in (["<|im_end|>"], ["im_end"], ["end"]):
        done = make_completion([*hello, eos[0]], {}, tok, eos, stop)
        assert (done.finish_reason, done.text) == ("eos", "Hello there"), stop
        assert done.tokens == [*hello, eos[0]]
    done = make_completion([*hello, eos[0]], {}, tok, eos, ["there"])
    assert (done.finish_reason, done.text, done.tokens) == ("stop", "Hello ", hello)
    start = tok.convert_tokens_to_ids("<|im_start|>")
    done = make_completion([*hello, start, *hello], {}, tok, eos, ["<|im_start|>"])
    assert (done.finish_reason, done.text, done.tokens) == ("stop", "Hello there", [*hello, start])


def test_length_cut_inside_a_character_leaves_no_replacement_char(tiny):
    """max_new_tokens ending half-way through a multi-byte character (an emoji is several byte
    tokens) left a trailing U+FFFD in the text; the tokens keep every id. A U+FFFD the model
    generated mid-text stays, and so does text ended by EOS."""
    _, tok = tiny
    eos = (tok.eos_token_id,)
    ids = tok("café 😀 x", add_special_tokens=False).input_ids
    half = next(n for n in range(1, len(ids)) if tok.decode(ids[:n]).endswith(REPLACEMENT_CHAR))
    done = make_completion(ids[:half], {}, tok, eos, [])
    assert (done.text, done.finish_reason, done.tokens) == ("café ", "length", ids[:half])
    assert make_completion(ids[:half], {}, tok, eos, ["zz"]).text == "café "
    real = tok("a\ufffd b", add_special_tokens=False).input_ids
    assert make_completion(real, {}, tok, eos, []).text == "a\ufffd b"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"seed": 1.5}, "seed"),
        ({"seed": "1"}, "seed"),
        ({"seed": True}, "seed"),
        ({"top_k": None}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": "0.5"}, "top_p"),
        ({"temperature": None}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"eos_token_ids": "2"}, "eos_token_ids"),
        ({"eos_token_ids": [2.0]}, "eos_token_ids"),
    ],
)
def test_generate_ids_names_an_argument_of_the_wrong_type(tiny, kwargs, name):
    """One TypeError line naming the argument, before the KV cache is allocated (a string
    reached torch, None failed in int(), a float or bool seed was taken silently)."""
    model, tok = tiny
    dec = SamDecoder(model, tok, method="ar", index=None)
    with pytest.raises(TypeError, match=f"^{name} must be") as e:
        dec.generate_ids([[1, 2, 3]], **{"max_new_tokens": 2, **kwargs})
    assert "\n" not in str(e.value) and dec._decoder is None


def test_generate_ids_takes_one_eos_id_as_transformers_does(tiny):
    model, tok = tiny
    dec = SamDecoder(model, tok, method="ar", index=None)
    want = dec.generate_ids([[1, 2, 3]], max_new_tokens=4, eos_token_ids=(7,)).tokens
    assert dec.generate_ids([[1, 2, 3]], max_new_tokens=4, eos_token_ids=7).tokens == want
    assert dec.generate_ids([[1, 2, 3]], max_new_tokens=4, eos_token_ids=None).tokens


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"max_new_tokens": "5"}, "max_new_tokens"),
        ({"max_new_tokens": 2.0}, "max_new_tokens"),
        ({"max_length": "9"}, "max_length"),
        ({"top_k": "5", "do_sample": True}, "top_k"),
        ({"temperature": "1", "do_sample": True}, "temperature"),
        ({"do_sample": "no"}, "do_sample"),
        ({"pad_token_id": "x"}, "pad_token_id"),
        ({"eos_token_id": "2"}, "eos_token_id"),
        ({"stop": 5}, "stop strings"),
    ],
)
def test_decoder_generate_names_an_argument_of_the_wrong_type(tiny, kwargs, name):
    model, tok = tiny
    dec = SamDecoder(model, tok, method="ar", index=None)
    ids = tok(["Hello"], return_tensors="pt").input_ids
    with pytest.raises(TypeError, match=f"^{name} must be") as e:
        dec.generate(ids, **{"max_new_tokens": 2, **kwargs})
    assert "\n" not in str(e.value)


def test_decoder_generate_takes_one_eos_id_and_none_as_unset(tiny):
    """eos_token_id as a bare int (transformers' form) and top_k=None (transformers: not given)
    are accepted."""
    model, tok = tiny
    dec = SamDecoder(model, tok, method="ar", index=None)
    ids = tok(["Hello"], return_tensors="pt").input_ids
    want = dec.generate(ids, max_new_tokens=3, eos_token_id=[7])
    assert torch.equal(dec.generate(ids, max_new_tokens=3, eos_token_id=7, top_k=None), want)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"top_k": "3"}, "top_k"), ({"top_p": "0.9"}, "top_p"), ({"top_k": 2.5}, "top_k")],
)
def test_one_liner_names_an_argument_of_the_wrong_type(tiny, kwargs, name):
    model, tok = tiny
    with pytest.raises(TypeError, match=f"^{name} must be"):
        samgpu.generate("Hi", model=model, tokenizer=tok, method="ar", raw=True, **kwargs)


def test_one_liner_follows_the_model_generation_config(tiny, monkeypatch):
    """What samgpu.generate leaves None comes from model.generation_config, as in
    SamDecoder.generate (it was ignored: 256 new tokens and greedy whatever the config said,
    which on this 96-token model was an error): max_new_tokens, and do_sample's temperature,
    top_k and top_p; the call's own values win. A setting samgpu cannot apply is a warning."""
    model, tok = tiny
    calls = []
    real = SamDecoder.generate_ids

    def spy(self, prompts, **kwargs):
        calls.append(kwargs)
        return real(self, prompts, **kwargs)

    monkeypatch.setattr(SamDecoder, "generate_ids", spy)
    kw = dict(model=model, tokenizer=tok, method="ar", raw=True)
    cfg = model.generation_config
    cfg.max_new_tokens = 5
    done = samgpu.generate("Hi", **kw)
    assert calls[-1]["max_new_tokens"] == 5 and calls[-1]["temperature"] == 0.0
    assert len(done.tokens) <= 5
    cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p = True, 0.6, 7, 0.9
    samgpu.generate("Hi", seed=1, **kw)
    got = {k: calls[-1][k] for k in ("max_new_tokens", "temperature", "top_k", "top_p")}
    assert got == {"max_new_tokens": 5, "temperature": 0.6, "top_k": 7, "top_p": 0.9}
    samgpu.generate("Hi", max_new_tokens=2, temperature=0, top_k=0, **kw)
    assert (calls[-1]["max_new_tokens"], calls[-1]["temperature"], calls[-1]["top_k"]) == (2, 0, 0)
    cfg.repetition_penalty = 1.2
    with pytest.warns(UserWarning, match=r"repetition_penalty=1\.2"):
        samgpu.generate("Hi", **kw)
