"""Stop strings as the CLI and the API watch them (completions.StopWatch, the scheduler's
`stop_when`): a stop string is seen at the first look after it is complete, however many tokens
it spans."""

from __future__ import annotations

import pytest

from samgpu.completions import StopWatch


class ByteTokenizer:
    """Token i <-> byte i (a byte-level BPE at its finest: a 4-byte character is 4 tokens); 256 is
    a special token (skipped, as EOS text is)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=False):
        kept = bytes(i for i in ids if i != 256) if skip_special_tokens else bytes(ids)
        return kept.decode("utf-8", errors="replace")


@pytest.mark.parametrize("stop", ["𓀀𓀁𓀂𓀃", "ꙮꙮꙮꙮꙮꙮꙮꙮ", "🦩\n🦩", "STOP"])
@pytest.mark.parametrize("every", [1, 2, 4, 8])
def test_stop_watch_sees_multibyte_stop_strings(stop, every):
    """A look every `every` tokens (the host checks) finds the stop string at the first look after
    its last token. Before, the margin counted characters: a stop string of 4 four-byte characters
    (16 tokens, margin 12) straddling a look was never seen, and the request decoded on to EOS or
    the length limit."""
    tok = ByteTokenizer()
    ids = tok.encode("Hello there, friend. " * 2) + tok.encode(stop) + tok.encode(" and more.")
    end = len(tok.encode("Hello there, friend. " * 2) + tok.encode(stop))
    watch = StopWatch(tok, [stop])
    looks = sorted({*range(every, len(ids) + 1, every), len(ids)})
    hits = [n for n in looks if watch(0, ids[:n])]
    assert hits and hits[0] == min(n for n in looks if n >= end)


def test_stop_watch_no_stop_no_hit():
    """Negative control: text without the stop string never stops."""
    tok = ByteTokenizer()
    ids = tok.encode("𓀀𓀁𓀂 and 𓀃 apart, " * 3)
    watch = StopWatch(tok, ["𓀀𓀁𓀂𓀃"])
    assert not any(watch(0, ids[:n]) for n in range(1, len(ids) + 1))
