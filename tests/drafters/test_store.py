"""The cross-request store as a drafting part (samgpu/drafters/parts/store.py), through the
Drafter contract against a deterministic oracle (tests/drafters/sim.py): lossless with the store
on, a repeated request drafted from the store, `finish` appending responses (or prompts and
responses), save / load / copy_from round trips, options validated, and the store off by default."""

import pytest
import torch

from samgpu.drafters import build_drafter, save_store, store_of
from samgpu.types import SOURCE_NAMES
from tests.drafters.sim import autoregressive, markov_oracle, simulate

V = 24
METHODS = ["sam", "sam+tr", "sam-tree", "merged"]
SOURCE_STORE = next(k for k, v in SOURCE_NAMES.items() if v == "store")


def _build(method, max_reqs=2, **options):
    options.setdefault("store_tokens", 1024)
    return build_drafter(
        method, vocab_size=V, max_reqs=max_reqs, max_len=256, device="cpu", index=None, **options
    )


@pytest.mark.parametrize("method", METHODS)
def test_repeated_request_drafts_from_the_store(method):
    """Round 1 answers prompt P (and another); round 2 asks for the same continuation behind a
    different prefix: lossless, and the store supplies long accepted drafts (>= 20 tokens in one
    step, SOURCE_STORE), which round 1 could not have."""
    oracle = markov_oracle(V, order=2, seed=0)
    drafter = _build(method, store=True)
    p = [5, 1, 9, 3]
    first = simulate(drafter, oracle, [p, [2, 2, 7]], 30, V)
    assert first.tokens[0] == autoregressive(oracle, p, 30)
    q = [4, 9, 9, 3]  # same last two tokens: the same continuation under an order-2 chain
    second = simulate(drafter, oracle, [q, [6, 6]], 30, V)
    assert second.tokens == [autoregressive(oracle, q, 30), autoregressive(oracle, [6, 6], 30)]
    assert SOURCE_STORE in second.sources[0] and max(second.accepted[0]) >= 20
    assert SOURCE_STORE not in first.sources[0]
    assert sum(second.steps) < sum(first.steps)


def test_finish_appends_responses_or_prompts_and_responses():
    """finish(state, rows) appends text[row, prompt_len:text_len] per row, in row order; with
    store_prompts=True the whole text."""
    oracle = markov_oracle(V, order=2, seed=1)
    prompts = [[3, 4, 5], [7, 7]]
    for with_prompts in (False, True):
        drafter = _build("sam", store=True, store_prompts=with_prompts)
        res = simulate(drafter, oracle, prompts, 12, V)
        docs = [d.tolist() for d in store_of(drafter).automaton.documents()]
        want = [(p if with_prompts else []) + t for p, t in zip(prompts, res.tokens, strict=True)]
        assert docs == want


def test_save_load_round_trip(tmp_path):
    """store=PATH: save_store writes the documents; a new drafter with store=PATH loads them (the
    same automaton arrays) and drafts from them at once; a smaller budget keeps the newest."""
    oracle = markov_oracle(V, order=2, seed=2)
    path = tmp_path / "run.samstore"
    drafter = _build("sam+tr", store=str(path))
    assert save_store(drafter) == path  # an empty store saves too
    simulate(drafter, oracle, [[1, 2, 3], [4, 5, 6]], 40, V)
    simulate(drafter, oracle, [[7, 8, 9], [3, 3, 1]], 40, V)
    assert save_store(drafter) == path
    again = _build("sam+tr", store=str(path))
    a, b = store_of(drafter).automaton, store_of(again).automaton
    for name in ("length", "link", "endpos", "hash", "tokens", "text_len", "num_states"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    res = simulate(again, oracle, [[9, 7, 8, 9]], 30, V)
    assert SOURCE_STORE in res.sources[0] and max(res.accepted[0]) >= 20
    small = _build("sam+tr", store=str(path), store_tokens=100)  # 50 per generation
    kept = [d.tolist() for d in store_of(small).automaton.documents()]
    assert kept and kept == [d.tolist() for d in a.documents()][-len(kept) :]
    assert len(kept) < 4


def test_copy_from_and_stats():
    oracle = markov_oracle(V, order=2, seed=3)
    src = _build("merged", store=True)
    simulate(src, oracle, [[1, 2], [3, 4]], 20, V)
    for budget in (1024, 64):  # same budget: arrays copied; another: documents re-appended
        dst = _build("merged", max_reqs=3, store=True, store_tokens=budget)
        store_of(dst).copy_from(store_of(src))
        got = [d.tolist() for d in store_of(dst).automaton.documents()]
        want = [d.tolist() for d in store_of(src).automaton.documents()]
        assert got == want[len(want) - len(got) :] and got
    stats = store_of(src).stats()
    assert stats["documents"] == [2, 0] and stats["tokens"] == [42, 0]
    assert stats["bytes_per_token_of_capacity"] > 90


def test_store_off_by_default_and_options_validated():
    """No store unless asked (store_of is None: the methods run exactly as without the part);
    bad option values are ValueErrors naming the option."""
    for method in METHODS:
        assert store_of(_build(method)) is None
        assert save_store(_build(method)) is None
    assert save_store(_build("sam", store=True)) is None  # no path: nothing to save
    for bad, match in (
        ({"store": ""}, "names no file"),
        ({"store": 3}, "store must be"),
        ({"store_tokens": 2}, "store_tokens"),
        ({"store_tokens": True}, "store_tokens"),
        ({"store_bias": 1.5}, "store_bias"),
        ({"store_prompts": "yes"}, "store_prompts"),
        ({"store": True, "store_tokens": 1 << 40}, "exceeds the largest store"),
    ):
        with pytest.raises(ValueError, match=match):
            _build("sam+tr", **bad)


def test_store_path_checked_with_the_options(tmp_path):
    """A folder or a file that is not a store fails when the options are made (before any
    model or drafter is built); a path that does not exist yet is fine (saved there later)."""
    from samgpu.drafters import get_method
    from samgpu.drafters.registry import make_options

    method = get_method("sam+tr")
    make_options(method, {"store": str(tmp_path / "new.samstore")})
    with pytest.raises(ValueError, match="is a folder"):
        make_options(method, {"store": str(tmp_path)})
    (tmp_path / "junk.samstore").write_bytes(b"x" * 64)
    with pytest.raises(ValueError, match="not a samgpu store file"):
        make_options(method, {"store": str(tmp_path / "junk.samstore")})


def test_store_alone_without_static_or_dynamic():
    """use_dynamic=False and no index: the store is the only automaton; still lossless."""
    oracle = markov_oracle(V, order=2, seed=4)
    drafter = _build("sam", max_reqs=1, store=True, use_dynamic=False)
    simulate(drafter, oracle, [[1, 5, 2]], 25, V)
    res = simulate(drafter, oracle, [[1, 5, 2]], 25, V)
    assert res.tokens[0] == autoregressive(oracle, [1, 5, 2], 25)
    assert SOURCE_STORE in res.sources[0]
    with pytest.raises(ValueError, match="no automaton"):
        _build("sam", use_dynamic=False)


@pytest.mark.parametrize("method", ["sam+tr", "merged"])
def test_triton_kernels_inside_store_drafters(method, monkeypatch):
    """Every kernel forced to Triton (interpreter on CPU): the append at finish, the fused update
    with the store's walks, the three-source draft; two rounds, the second drafting from the
    store; lossless."""
    monkeypatch.setenv("SAMGPU_BACKEND", "triton")
    oracle = markov_oracle(V, order=2, seed=5)
    drafter = _build(method, store=True, max_nodes=10, store_tokens=256)
    simulate(drafter, oracle, [[5, 1, 9, 3], [2, 2]], 16, V)
    res = simulate(drafter, oracle, [[4, 9, 9, 3], [2, 2]], 16, V)
    assert res.tokens == [
        autoregressive(oracle, [4, 9, 9, 3], 16),
        autoregressive(oracle, [2, 2], 16),
    ]
    assert SOURCE_STORE in res.sources[0] + res.sources[1]


_FORBIDDEN = {"item", "tolist", "cpu", "numpy", "nonzero", "unique", "synchronize"}


def _host_reads(fn, casts: bool = True) -> list[str]:
    """Calls in fn's source that read GPU values on the host (as tests/test_no_sync.py scans);
    casts=False skips int()/float()/bool(), for launchers that cast host config values."""
    import ast
    import inspect
    import textwrap

    bad = []
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in _FORBIDDEN:
                bad.append(f"{fn.__qualname__}: .{f.attr}()")
            if casts and isinstance(f, ast.Name) and f.id in ("bool", "int", "float") and node.args:
                if not all(isinstance(a, ast.Constant) for a in node.args):
                    bad.append(f"{fn.__qualname__}: {f.id}()")
    return bad


def test_store_code_on_the_step_and_finish_paths_has_no_host_reads():
    """start / update / propose / finish with the store read nothing back from the GPU (the
    launchers use shapes and host ints only). Negative control: the scan flags `documents`
    (a save-time read)."""
    from samgpu.automata import StoreAutomaton
    from samgpu.drafters.parts.automata import SamAutomata
    from samgpu.drafters.parts.store import SamStore
    from samgpu.kernels import _sam_store_jit, sam_draft, sam_store, sam_store_match, sam_update

    fns = [
        SamAutomata.update, SamAutomata.draft_chain, SamAutomata.finish, SamAutomata.start,
        SamAutomata.prepare,
        SamStore.start, SamStore.finish, StoreAutomaton.start_rows, StoreAutomaton.advance,
        StoreAutomaton.append, StoreAutomaton.reset_matches, sam_store.sam_store_append_triton,
        sam_store_match.sam_store_match_triton, _sam_store_jit.scalars, _sam_store_jit.check_batch,
    ]  # fmt: skip
    launchers = [sam_update.sam_update_triton, sam_draft.sam_draft_chain_triton]  # cast config
    assert [v for fn in fns for v in _host_reads(fn)] == []
    assert [v for fn in launchers for v in _host_reads(fn, casts=False)] == []
    assert _host_reads(StoreAutomaton.documents)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="set_sync_debug_mode needs CUDA")
def test_store_runs_without_sync_on_cuda():
    """sam+tr with the store on, CUDA graphs: steps, the store's start and finish run under
    torch.cuda.set_sync_debug_mode("error")."""
    import copy

    from samgpu.decoding.config import GenerationConfig
    from samgpu.decoding.runners import make_runner
    from samgpu.drafters.protocol import NewRequests
    from samgpu.factory import build_decoder
    from tests.decoding.conftest import tiny_model

    runner = make_runner(copy.deepcopy(tiny_model("llama")).to("cuda"))
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    options = {"store": True, "store_tokens": 4096, "max_nodes": 8}
    dec = build_decoder(runner, "sam+tr", batch_size=3, max_len=64, options=options)
    config = GenerationConfig(max_new_tokens=20, seed=0)
    dec.generate(prompts, config)  # compiles kernels, captures graphs, fills the store
    engine = dec.engine
    engine.configure(config, 3)
    engine.prefill([0, 1, 2], prompts)
    state = engine.state
    store = store_of(engine.drafter)
    rows = torch.tensor([0, 2], device="cuda")
    new = NewRequests(rows=rows, lengths=state.text_len.clone(), longest=4)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            engine.step()
        store.finish(state, rows)
        store.start(state, new)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert sum(store.stats()["documents"]) == 5
