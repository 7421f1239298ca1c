"""Keyed sampling at the API's edge: generate_ids(sample_keys=) takes one int a prompt, from a
list, a range, a NumPy array or a tensor (a job's record indices), and refuses anything else with
one TypeError / ValueError naming the argument, before any buffer is allocated. Uses the tiny
random Llama with the default tokenizer (tests/api/fixtures.py)."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from samgpu.api import SamDecoder


@pytest.fixture(scope="module")
def decoder(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return SamDecoder(model, AutoTokenizer.from_pretrained(tiny_model_dir), method="ar")


PROMPTS = [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    "keys, error",
    [
        (5, TypeError),  # was: "'int' object is not iterable" from inside generate_ids
        ("ab", TypeError),
        ([1.0, 2.0], TypeError),
        ([True, False], TypeError),
        ({0: 1, 1: 2}, TypeError),
        ([1], ValueError),
        ([1, 2, 3], ValueError),
        ([0, 2**64], ValueError),
    ],
)
def test_bad_sample_keys_name_the_argument_before_any_buffer(decoder, keys, error):
    decoder._decoder, decoder._capacity = None, (0, 0)
    with pytest.raises(error, match="sample_keys"):
        decoder.generate_ids(PROMPTS, max_new_tokens=3, temperature=1.0, seed=1, sample_keys=keys)
    assert decoder._decoder is None  # refused before the decoder was built


def test_sample_keys_from_numpy_or_a_tensor_are_the_same_keys(decoder):
    """Record indices as NumPy or torch integers key the samples as the same Python ints do (they
    were refused: "sample_keys must be ints that fit in 64 bits")."""

    def run(keys):
        out = decoder.generate_ids(
            PROMPTS, max_new_tokens=4, temperature=1.5, seed=3, sample_keys=keys
        )
        return out.tokens

    ref = run([7, -9])
    assert run(np.array([7, -9])) == ref
    assert run(torch.tensor([7, -9])) == ref
    assert run((np.int32(7), np.int64(-9))) == ref
    assert run([8, -9]) != ref or run([7, 10]) != ref  # (the keys do change the samples)
