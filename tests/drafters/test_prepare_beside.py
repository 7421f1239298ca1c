"""Drafter.prepare beside the decode steps: an overlapped admission builds the new slots'
dynamic automata and static matches on the prefill's second stream while the live slots' step
graphs run, and the automata kernels leave a slot with no new tokens unwritten (the steps reach
the admitted, still finished slot with num_new 0). Checked against the same admission made at a
check, where `start` builds them, for every automaton method. On CUDA the real second stream; on
a CPU (no second stream: the launch would leave prepare to the landing) the launch runs it
inline, in the same place, so that CI covers the engine's half of it."""

from __future__ import annotations

import copy

import pytest
import torch

from samgpu.decoding.config import GenerationConfig
from samgpu.factory import build_decoder

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
]
METHODS = ["sam+tr", "sam", "sam-tree", "merged"]


@pytest.fixture
def inline_beside(monkeypatch, device):
    """On a CPU: Prefiller.launch runs its `beside` inline, as the second stream would."""
    if device != "cpu":
        return
    import samgpu.decoding.prefill as prefill

    launch = prefill.Prefiller.launch

    def inline(self, rows, prompts, beside=None):
        landing = launch(self, rows, prompts)
        if beside is not None:
            beside()
            landing.beside_ran = True
        return landing

    monkeypatch.setattr(prefill.Prefiller, "launch", inline)


def _automata(engine) -> dict[str, list]:
    """Slot 3's automaton as built (states, edges and text up to their counts: what lies past them
    is an earlier request's), its hash table, counters and static match. The live slots 0-2 are
    checked for their own consistency: what they decoded may differ between two runs (drafts
    from a table that learns across calls), the tokens never do."""
    d = engine.drafter.automata.dynamic
    m = engine.drafter.automata._static_matches
    state = engine.state
    for b in range(3):  # each live slot's automaton holds exactly its committed text
        n = int(state.text_len[b])
        assert int(d.text_len[b]) == n
        assert torch.equal(d.tokens[b, :n], state.text[b, :n])
    b, out = 3, {}
    used = {"num_states": ("length", "link", "endpos", "first_edge")}
    used |= {"num_edges": ("edge_next", "edge_slot"), "text_len": ("tokens",)}
    for count, names in used.items():
        for name in names:
            out[name] = [getattr(d, name)[b, : int(getattr(d, count)[b])]]
    for name in ("hash", "num_states", "num_edges", "last", "text_len", "match_state"):
        out[name] = [getattr(d, name)[b].clone()]
    out["static"] = [(int(m.state[b]), int(m.match_len[b]))]
    return out


def _same(a: list, b: list) -> bool:
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        for x, y in zip(a, b, strict=True)
    )


_BUILT: dict = {}


def _decoder(method: str, device: str):
    """(decoder, prompts of slots 0-2, the admitted prompt, runner), built once per method and
    device: a tiny Llama, a static index of random documents."""
    if (method, device) in _BUILT:
        return _BUILT[method, device]
    from samgpu.decoding.runners import make_runner
    from samgpu.sam import SamIndex
    from tests.decoding.conftest import tiny_model

    torch.backends.cuda.matmul.allow_tf32 = False
    runner = _BUILT.get(device) or make_runner(copy.deepcopy(tiny_model("llama")).to(device))
    _BUILT[device] = runner
    gen = torch.Generator().manual_seed(0)
    corpus = torch.randint(3, 120, (4, 300), generator=gen).tolist()
    index = SamIndex.build(corpus, vocab_size=runner.vocab_size, eos_id=2)
    dec = build_decoder(
        runner, method, batch_size=4, max_len=256, index=index, options={"max_nodes": 8}
    )
    prompts = torch.randint(3, 120, (3, 12), generator=gen).tolist()
    new = corpus[1][:100] + corpus[2][:100]  # (its continuations draft from both automata)
    _BUILT[method, device] = dec, prompts, new, runner
    return _BUILT[method, device]


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
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return _automata(engine)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_prepare_beside_steps_builds_what_start_builds(method, device, inline_beside):
    dec, prompts, new, _ = _decoder(method, device)
    dec.generate(prompts + [new], GenerationConfig(max_new_tokens=8, seed=0))  # compile, capture
    want = _run(dec, prompts, new, overlapped=False)
    for attempt in range(3 if device == "cuda" else 1):  # (a race need not show every time)
        got = _run(dec, prompts, new, overlapped=True)
        for name, ref in want.items():
            assert _same(got[name], ref), (attempt, name)
    assert int(want["text_len"][0]) == len(new)  # (the prompt is in slot 3's automaton)


@pytest.mark.parametrize("device", DEVICES)
def test_negative_control_rows_landed_unprepared_differ(device, inline_beside):
    """The comparison above sees a slot whose prepare did not run (its automaton stays the last
    request's)."""
    dec, prompts, new, _ = _decoder("sam+tr", device)
    want = _run(dec, prompts, new, overlapped=False)
    _run(dec, prompts, prompts[0] * 3, overlapped=False)  # slot 3: another prompt's automaton
    got = _run(dec, prompts, new, overlapped=True, skip_prepare=True)
    assert not all(_same(got[name], ref) for name, ref in want.items())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_overlapped_admissions_with_automata_equal_ar(method, device, inline_beside):
    """Continuous batching with refills beside the live slots (prepare at the launch): greedy
    tokens equal ar's."""
    dec, prompts, new, runner = _decoder(method, device)
    many = [p[: 4 + i] for i, p in enumerate(prompts * 3)] + [new]
    cfg = GenerationConfig(
        max_new_tokens=24, eos_token_ids=(7,), continuous=True, check_every=2,
        overlap_admissions=True,
    )  # fmt: skip
    ar = build_decoder(runner, "ar", batch_size=4, max_len=256)
    assert dec.generate(many, cfg).tokens == ar.generate(many, cfg).tokens
