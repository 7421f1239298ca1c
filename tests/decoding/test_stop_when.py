"""Stop strings end decoding at a host check (scheduler `stop_when`, completions.StopWatch), not at
EOS or the length limit: on the toy model, a stop string taken from a request's own greedy text
ends that request within one window of its appearance, cut exactly where a full run would be cut,
while the other requests run on unchanged; without `stop_when` (negative control) it runs to the
limit."""

from __future__ import annotations

import pytest

from samgpu.completions import StopWatch
from samgpu.decoding.config import GenerationConfig
from samgpu.hf_args import cut_tokens_at_stop
from tests.decoding.test_loop import PROMPTS, ToyRunner, _test_decoder, reference_greedy

LETTERS = "abcdefghijkl"


class LetterTokenizer:
    """Token i <-> letter i; id 11 is a special token (skipped like EOS text)."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(LETTERS[i] for i in ids if not (skip_special_tokens and i == 11))


@pytest.mark.parametrize("continuous", [False, True])
def test_stop_string_ends_decoding_at_the_next_check(continuous):
    runner, tok = ToyRunner(), LetterTokenizer()
    max_new, check = 40, 4
    refs = [reference_greedy(runner, p, max_new) for p in PROMPTS]
    texts = [tok.decode(r, skip_special_tokens=True) for r in refs]
    # three tokens of request 2's text that no other request's holds
    stop = next(
        t
        for i in range(37)
        if not any((t := texts[2][i : i + 3]) in x for x in texts[:2] + texts[3:])
    )
    first = texts[2].index(stop) + len(stop)
    dec = _test_decoder(runner, PROMPTS, 2, error_rate=0.3)
    config = GenerationConfig(max_new_tokens=max_new, check_every=check, continuous=continuous)

    flags_after = []  # static: request 2 ran in slot 0 beside request 3, in slot 1

    def progress(info):
        if not continuous and info.request_ids == [3]:
            flags_after.append(dec.engine.read_flags()[0][0])

    out = dec.generate(PROMPTS, config, on_progress=progress, stop_when=StopWatch(tok, [stop]))
    assert continuous or flags_after and all(flags_after)  # its device row no longer decodes
    assert out.tokens[2] == refs[2][: len(out.tokens[2])]  # a prefix: still lossless
    # ended at the check after the stop appeared: within a window of steps (each emits <= 4)
    assert first <= len(out.tokens[2]) <= first + check * 4 < max_new
    assert cut_tokens_at_stop(out.tokens[2], tok, [stop]) == (refs[2][:first], True)
    assert [out.tokens[i] for i in (0, 1, 3)] == [refs[i] for i in (0, 1, 3)]

    plain = dec.generate(PROMPTS, config)  # negative control: no watch, no early end
    assert plain.tokens[2] == refs[2] and len(plain.tokens[2]) == max_new


def test_watch_reads_only_new_tokens_plus_a_margin():
    """A stop string straddling two looks is found; one wholly before the margin was already
    looked at (and reported then)."""
    seen = []

    class Recording(LetterTokenizer):
        def decode(self, ids, skip_special_tokens=False):
            seen.append(len(ids))
            return super().decode(ids, skip_special_tokens)

    watch = StopWatch(Recording(), ["cd"])  # margin: 2 + 8 tokens
    assert not watch(0, [0, 1, 2])  # "abc"
    assert watch(0, [0, 1, 2, 3])  # "abcd": the stop straddles the looks
    assert not watch(1, list(range(3)) * 10)  # request 1 has its own history
    assert not watch(1, list(range(3)) * 10 + [0] * 30)
    assert seen == [3, 4, 30, 40]  # the last look: 30 new tokens + the 10-token margin
