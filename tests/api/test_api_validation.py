"""What the API reports at its edges: the finish reason and the text at stop strings and at the
length limit. Uses the tiny random Llama with the default tokenizer (tests/api/fixtures.py)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from samgpu.api import make_completion
from samgpu.completions import REPLACEMENT_CHAR


@pytest.fixture
def tiny(tiny_model_dir):
    """A fresh model per test."""
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
