"""Drafter.prepare beside the decode steps (CUDA only): an overlapped admission builds the new
slots' dynamic automata and static matches on the prefill's second stream while the live slots'
step graphs run, and the automata kernels leave a slot with no new tokens unwritten (the steps
reach the admitted, still finished slot with num_new 0). Checked against the same admission made
at a check, where `start` builds them."""

from __future__ import annotations

import copy

import pytest
import torch

from samgpu.decoding.config import GenerationConfig
from samgpu.factory import build_decoder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="a second stream needs CUDA"),
]


def _automata(engine) -> dict[str, list]:
    """Each slot's automaton as built (states, edges and text up to their counts: what lies past
    them is an earlier request's), its hash table, counters and static match."""
    d = engine.drafter.automata.dynamic
    m = engine.drafter.automata._static_matches
    out: dict[str, list] = {}
    for b in range(4):
        used = {"num_states": ("length", "link", "endpos", "first_edge")}
        used |= {"num_edges": ("edge_next", "edge_slot"), "text_len": ("tokens",)}
        for count, names in used.items():
            for name in names:
                out.setdefault(name, []).append(getattr(d, name)[b, : int(getattr(d, count)[b])])
        for name in ("hash", "num_states", "num_edges", "last", "text_len", "match_state"):
            out.setdefault(name, []).append(getattr(d, name)[b].clone())
        out.setdefault("static", []).append((int(m.state[b]), int(m.match_len[b])))
    return out


def _same(a: list, b: list) -> bool:
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        for x, y in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module")
def sam_tr():
    from samgpu.decoding.runners import make_runner
    from samgpu.sam import SamIndex
    from tests.decoding.conftest import tiny_model

    torch.backends.cuda.matmul.allow_tf32 = False
    runner = make_runner(copy.deepcopy(tiny_model("llama")).to("cuda"))
    gen = torch.Generator().manual_seed(0)
    corpus = torch.randint(3, 120, (4, 300), generator=gen).tolist()
    index = SamIndex.build(corpus, vocab_size=runner.vocab_size, eos_id=2)
    dec = build_decoder(
        runner, "sam+tr", batch_size=4, max_len=256, index=index, options={"max_nodes": 8}
    )
    prompts = torch.randint(3, 120, (3, 12), generator=gen).tolist()
    new = corpus[1][:100] + corpus[2][:100]  # (its continuations draft from both automata)
    return dec, prompts, new, runner


def _run(dec, prompts, new, overlapped: bool, skip_prepare: bool = False):
    engine = dec.engine
    config = GenerationConfig(max_new_tokens=40, seed=0)
    engine.configure(config, 4)
    engine.prefill([0, 1, 2], prompts)
    engine.begin_collect([3])()  # slot 3 free (finished), as the scheduler admits into it
    for _ in range(2):
        engine.step()
    if overlapped:
        if skip_prepare:  # negative control: the slot lands as prepared but never was
            engine.drafter.prepare = lambda state, new: None
        try:
            landing = engine.begin_prefill([3], [new])
        finally:
            vars(engine.drafter).pop("prepare", None)
        assert landing.beside_ran
        for _ in range(6):  # beside the prepare on the second stream
            engine.step()
        engine.end_prefill()
    else:
        for _ in range(6):
            engine.step()
        engine.prefill([3], [new])
    torch.cuda.synchronize()
    return _automata(engine)


def test_prepare_beside_steps_builds_what_start_builds(sam_tr):
    dec, prompts, new, _ = sam_tr
    dec.generate(prompts + [new], GenerationConfig(max_new_tokens=8, seed=0))  # compile, capture
    want = _run(dec, prompts, new, overlapped=False)
    for attempt in range(3):  # (a race need not show every time: several tries)
        got = _run(dec, prompts, new, overlapped=True)
        for name, ref in want.items():
            assert _same(got[name], ref), (attempt, name)
    assert int(want["text_len"][3]) == len(new)  # (the prompt is in slot 3's automaton)


def test_negative_control_rows_landed_unprepared_differ(sam_tr):
    """The comparison above sees a slot whose prepare did not run (its automaton stays the last
    request's)."""
    dec, prompts, new, _ = sam_tr
    want = _run(dec, prompts, new, overlapped=False)
    _run(dec, prompts, prompts[0] * 3, overlapped=False)  # slot 3: another prompt's automaton
    got = _run(dec, prompts, new, overlapped=True, skip_prepare=True)
    assert not all(_same(got[name], ref) for name, ref in want.items())


def test_overlapped_admissions_with_automata_equal_ar(sam_tr):
    """Continuous batching with refills beside the live slots (prepare on the second stream):
    sam+tr's greedy tokens equal ar's."""
    dec, prompts, new, runner = sam_tr
    many = [p[: 4 + i] for i, p in enumerate(prompts * 3)] + [new]
    cfg = GenerationConfig(
        max_new_tokens=24, eos_token_ids=(7,), continuous=True, check_every=2,
        overlap_admissions=True,
    )  # fmt: skip
    ar = build_decoder(runner, "ar", batch_size=4, max_len=256)
    assert dec.generate(many, cfg).tokens == ar.generate(many, cfg).tokens
