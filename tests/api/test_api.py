"""SamDecoder is a drop-in for `model.generate`: same arguments, same result (greedy: token for
token, in fp32), and a clear error for every argument it cannot honour. Uses a tiny random Llama
with the default tokenizer (tests/api/fixtures.py)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import samgpu
from samgpu.api import SamDecoder
from samgpu.hf_args import cut_tokens_at_stop, first_stop, prompts_from_tensor


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    return model, tok


def left_padded_batch(tok):
    return tok(["Hello there, how are", "x"], return_tensors="pt", padding=True)


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")
@pytest.mark.parametrize("method", ["ar", "sam+tr"])
def test_greedy_matches_transformers_generate(tiny, method):
    """A left-padded batch of two prompts of different lengths: the result has the same shape as
    model.generate's ([B, T + new], padding kept on the left, pad_token_id after EOS) and equal
    values. Without max_new_tokens both follow transformers' default (20 new tokens)."""
    model, tok = tiny
    batch = left_padded_batch(tok)
    assert batch.attention_mask[1, 0] == 0  # really left-padded
    dec = SamDecoder(model, tok, method=method, index=None)
    for kwargs in ({"max_new_tokens": 9}, {}):
        want = model.generate(**batch, do_sample=False, **kwargs)
        got = dec.generate(**batch, **kwargs)
        assert got.dtype == torch.long
        assert torch.equal(got, want), (got, want)
    assert len(dec.last_stats) == 2
    assert {"steps", "mat"} <= set(dec.last_stats[0])


def test_continuous_batching_gives_the_same_ids(tiny):
    """SamDecoder(continuous_batching=True): five prompts through two slots, refilled as requests
    end, give the same token ids (and per-request stats) as plain batches."""
    model, tok = tiny
    prompts = [list(tok(t).input_ids) for t in ("Hello there", "x", "a b c d e f", "1 2", "The")]
    plain = SamDecoder(model, tok, method="sam+tr", index=None)
    cont = SamDecoder(model, tok, method="sam+tr", index=None, continuous_batching=True)
    kw = {"max_new_tokens": 10, "batch_size": 2}
    want = plain.generate_ids(prompts, **kw).tokens
    assert cont.generate_ids(prompts, **kw).tokens == want
    assert [s["generated"] for s in cont.last_stats] == [len(t) for t in want]


def test_prompt_containing_the_pad_id_keeps_it(tiny):
    """SmolLM2 pads with its EOS id, which every chat prompt contains (<|im_end|> closes the system
    turn). Without an attention_mask transformers keeps those tokens (pad == EOS: no mask is
    inferred), and so must SamDecoder."""
    model, tok = tiny
    chat = [{"role": "user", "content": "Hi"}]
    ids = tok(
        tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
        return_tensors="pt",
    ).input_ids
    assert (ids == model.generation_config.pad_token_id).any()
    dec = SamDecoder(model, tok, method="ar")
    prompts, _ = prompts_from_tensor(model, ids, None, {})
    assert prompts == [ids[0].tolist()]
    want = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(dec.generate(ids, max_new_tokens=4), want)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"num_beams": 4}, ValueError, "num_beams=4 is not supported: .*beam search"),
        ({"repetition_penalty": 1.3}, ValueError, "repetition_penalty=1.3 is not supported"),
        ({"num_return_sequences": 2}, ValueError, "num_return_sequences=2"),
        ({"logits_processor": [object()]}, ValueError, "logits_processor"),
        ({"return_dict_in_generate": True}, ValueError, "last_stats"),
        ({"do_sample": True, "temperature": 0.0}, ValueError, "positive temperature"),
        ({"do_sample": True, "top_p": 0.0}, ValueError, r"top_p=0.0 must be in \(0, 1\]"),
        ({"max_length": 3}, ValueError, "nothing to generate"),
        ({"no_such_argument": 1}, TypeError, "unexpected keyword argument.*no_such_argument"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_unsupported_arguments_are_never_ignored(tiny, kwargs, error, pattern):
    model, tok = tiny
    dec = SamDecoder(model, tok, method="pld")
    with pytest.raises(error, match=pattern):
        dec.generate(**left_padded_batch(tok), **kwargs)


def test_neutral_values_of_unsupported_arguments_are_fine(tiny):
    """num_beams=1, repetition_penalty=1.0, use_cache=True change nothing and are accepted (checked
    by reaching argument resolution: a later, separate error shows they passed)."""
    model, tok = tiny
    dec = SamDecoder(model, tok, method="pld")
    with pytest.raises(ValueError, match="nothing to generate"):
        dec.generate(
            **left_padded_batch(tok),
            num_beams=1,
            repetition_penalty=1.0,
            use_cache=True,
            max_length=2,
        )


def test_model_generation_config_setting_is_reported(tiny):
    model, tok = tiny
    model.generation_config.repetition_penalty = 1.2
    try:
        dec = SamDecoder(model, tok, method="pld")
        with pytest.raises(
            ValueError, match=r"set in model.generation_config.*repetition_penalty=1.0"
        ):
            dec.generate(**left_padded_batch(tok), max_new_tokens=2)
    finally:
        model.generation_config.repetition_penalty = None


def test_bad_constructor_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="unknown method 'beam'.*sam\\+tr"):
        SamDecoder(model, tok, method="beam")
    with pytest.raises(ValueError, match="not_an_option"):
        SamDecoder(model, tok, method="tr", not_an_option=1)
    with pytest.raises(ValueError, match="not found"):
        SamDecoder(model, tok, method="sam", index="/no/such/index.samidx")


def test_bad_inputs(tiny):
    model, tok = tiny
    dec = SamDecoder(model, tok, method="pld")
    with pytest.raises(ValueError, match="integer tensor"):
        dec.generate(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"attention_mask \(2, 4\) and input_ids \(2, 3\)"):
        dec.generate(torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="empty prompt"):
        dec.generate([""])
    with pytest.raises(ValueError, match=r"outside \[0, 49152\)"):
        dec.generate(torch.tensor([[5, 49152]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="row 0 .* no tokens"):
        dec.generate(torch.ones(1, 3, dtype=torch.long), attention_mask=torch.zeros(1, 3))


def test_strings_stop_strings_and_one_liner(tiny, tiny_model_dir):
    """Strings in -> completions out (prompt excluded). A stop string taken from the middle of the
    unconstrained completion cuts it right before the stop string, and decoding ends there (a host
    check; on a CPU every step of one sequence); the tensor form keeps the stop string, as
    transformers' stop_strings does."""
    model, tok = tiny
    dec = SamDecoder(model, tok, method="ar")
    (free,) = dec.generate(["The quick brown fox"], max_new_tokens=12)
    prompt = tok(["The quick brown fox"], return_tensors="pt").input_ids
    ids = dec.generate(prompt, max_new_tokens=12)
    assert tok.decode(ids[0, prompt.shape[1] :], skip_special_tokens=True) == free
    assert len(free) > 4
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    (cut,) = dec.generate(["The quick brown fox"], max_new_tokens=12, stop=stop)
    assert cut == free[: free.find(stop)]
    assert dec.last_stats[0]["generated"] < 12  # decoding ended at the stop, not at the limit

    c = samgpu.generate(
        "The quick brown fox",
        model=str(tiny_model_dir),
        raw=True,
        method="ar",
        max_new_tokens=12,
        device="cpu",
    )
    assert isinstance(c, samgpu.Completion) and c.text == free and str(c) == free
    assert c.finish_reason in ("length", "eos") and c.stats["steps"] >= 1
    both = samgpu.generate(
        ["a", "b"], model=str(tiny_model_dir), method="ar", max_new_tokens=3, device="cpu"
    )
    assert len(both) == 2 and all(len(x.tokens) <= 3 for x in both)


def test_cut_tokens_at_stop(tiny):
    _, tok = tiny
    ids = tok("alpha beta gamma delta").input_ids
    cut, hit = cut_tokens_at_stop(ids, tok, ["gamma"])
    assert hit and tok.decode(cut).endswith("gamma")
    assert first_stop(tok.decode(cut[:-1]), ["gamma"]) < 0  # shortest such prefix
    assert cut_tokens_at_stop(ids, tok, ["omega"]) == (ids, False)


def test_streamer_receives_prompt_then_all_new_tokens(tiny):
    model, tok = tiny
    dec = SamDecoder(model, tok, method="ar", check_every=2)

    class Collect:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    s = Collect()
    ids = tok(["Hello"], return_tensors="pt").input_ids
    out = dec.generate(ids, max_new_tokens=7, streamer=s)
    assert s.ended and s.puts[0] == ids[0].tolist()
    assert sum(s.puts[1:], []) == out[0, ids.shape[1] :].tolist()


def test_sampling_defaults_follow_transformers(tiny):
    """do_sample=True alone samples at temperature 1 with top_k 50 (transformers' global defaults);
    values in model.generation_config come next; the call's arguments win; do_sample=False is greedy
    whatever the temperature."""
    from samgpu.hf_args import resolve_request

    model, _ = tiny
    r = resolve_request(model, {"do_sample": True}, [4])
    assert (r.temperature, r.top_k, r.top_p, r.max_new_tokens) == (1.0, 50, 1.0, 20)
    assert resolve_request(model, {"temperature": 0.7}, [4]).temperature == 0.0
    cfg = model.generation_config
    cfg.do_sample, cfg.temperature, cfg.top_p = True, 0.6, 0.9
    try:
        r = resolve_request(model, {"top_p": 0.5, "max_length": 10}, [4], 6)
        assert (r.temperature, r.top_k, r.top_p, r.max_new_tokens) == (0.6, 50, 0.5, 4)
    finally:
        cfg.do_sample, cfg.temperature, cfg.top_p = None, None, None
    r = resolve_request(model, {"eos_token_id": [5, 6], "stop_strings": "END"}, [4])
    assert r.eos_token_ids == (5, 6) and r.stop == ("END",) and r.pad_token_id == 2


def test_eos_with_stops_fits_the_loop_buffer():
    """EOS ids first, then single-token stop ids while the loop's EOS buffer (MAX_EOS slots) has
    room (the rest are cut after generation); more EOS ids than slots is an error, never a silent
    drop."""
    from samgpu.api import eos_with_stops
    from samgpu.decoding.config import MAX_EOS

    assert eos_with_stops((2, 5), (5, 7, 7)) == (2, 5, 7)
    eos = tuple(range(MAX_EOS - 2))
    assert eos_with_stops(eos, (100, 101, 102)) == (*eos, 100, 101)
    with pytest.raises(ValueError, match=f"at most {MAX_EOS}"):
        eos_with_stops(tuple(range(MAX_EOS + 1)), ())
