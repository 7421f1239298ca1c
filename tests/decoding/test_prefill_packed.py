"""Packed prefill (samgpu/decoding/prefill.py): an admission's prompts concatenated into one row,
each attending to its own prompt, must leave the cache (every slot's K/V columns below its length,
cache_len) and the prompts' hidden states as the padded prefill leaves them; slots not admitted are
untouched. Run eagerly on the CPU (packing is the default on CUDA only), in fp32."""

import pytest
import torch

from samgpu.decoding.prefill import Prefiller, packs_by_default
from samgpu.decoding.prefill_plan import (
    MIN_WIDTH,
    pack_bucket,
    pack_buckets,
    pack_capacity,
    plan_packs,
)
from samgpu.decoding.runners import make_runner
from tests.decoding.conftest import TINY_VOCAB, tiny_model

MAX_REQS, MAX_LEN = 6, 48


@pytest.fixture(scope="module")
def runner():
    return make_runner(tiny_model("llama", seed=3), prefer="fast")


def admit(runner, pack: bool, rows, prompts, with_hidden=False, capacity=None, graphs=False):
    """A fresh cache (K/V filled with a marker) after Prefiller(...)(rows, prompt[:-1]s); with
    `graphs` (CUDA) the same prefiller admits `prompts` twice, the second time into the slots
    `rows` reversed, which is what is returned (replays of captured graphs, reused buffers)."""
    cache = runner.allocate_cache(MAX_REQS, MAX_LEN)
    cache.k.fill_(7.0)
    cache.v.fill_(7.0)
    prefiller = Prefiller(runner, cache, use_graphs=graphs, with_hidden=with_hidden, pack=pack)
    if capacity is not None:
        prefiller.capacity = capacity
    lengths = [len(p) - 1 for p in prompts]
    width = max(lengths)
    ids = torch.zeros(len(prompts), width, dtype=torch.int32)
    for i, p in enumerate(prompts):
        ids[i, : len(p) - 1] = torch.tensor(p[:-1])
    dev = runner.device
    ids, lens = ids.to(dev), torch.tensor(lengths, dtype=torch.int32, device=dev)
    host = [p[:-1] for p in prompts]
    if graphs:  # a first admission elsewhere: the one returned replays what it captured
        other = rows[::-1]
        prefiller(other, torch.tensor(other, device=dev), ids, lens, host)
    _, hidden = prefiller(rows, torch.tensor(rows, device=dev), ids, lens, host)
    return cache, hidden


def assert_same_admission(got, want, got_hidden, want_hidden, rows, sizes, slots):
    """Equal cache_len; equal K/V in `slots` (an admitted slot's, in `rows`, columns below its
    length; every column of the others); equal hidden states of each prompt[:-1]."""
    assert torch.equal(got.cache_len, want.cache_len)
    for slot in slots:
        n = int(want.cache_len[slot]) if slot in rows else MAX_LEN
        for name in ("k", "v"):
            a, b = getattr(got, name)[:, slot, :, :n], getattr(want, name)[:, slot, :, :n]
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"{name} slot {slot}")
    for i, size in enumerate(sizes):
        a, b = got_hidden[i, : size - 1], want_hidden[i, : size - 1]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def prompts_of(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, TINY_VOCAB, (n,), generator=g).tolist() for n in sizes]


@pytest.mark.parametrize(
    "rows, sizes, capacity",
    [
        ([4, 1, 2], [9, 30, 2], None),  # one call, a one-token prompt[:-1]
        ([0, 5, 3, 2], [17, 1, 40, 25], 48),  # an empty prompt[:-1]; two calls (capacity)
        ([3], [33], None),
    ],
)
def test_packed_equals_padded(runner, rows, sizes, capacity):
    prompts = prompts_of(sizes)
    want, want_hidden = admit(runner, False, rows, prompts, with_hidden=True)
    got, got_hidden = admit(runner, True, rows, prompts, with_hidden=True, capacity=capacity)
    assert_same_admission(got, want, got_hidden, want_hidden, rows, sizes, range(MAX_REQS))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="prefill graphs need a CUDA device")
@pytest.mark.parametrize("rows, sizes", [([4, 1, 2], [9, 30, 2]), ([3], [33]), ([0, 5], [1, 20])])
def test_packed_graphs_equal_padded_graphs(runner, rows, sizes):
    """The CUDA path users run: packed calls replaying their width bucket's graph (fp32, no TF32)
    leave what padded graph calls leave; the admission is the second into reused buffers."""
    import copy

    torch.backends.cuda.matmul.allow_tf32 = False
    cuda_runner = make_runner(copy.deepcopy(runner.model).to("cuda"), prefer="fast")
    prompts = prompts_of(sizes, seed=5)
    want, want_hidden = admit(cuda_runner, False, rows, prompts, with_hidden=True, graphs=True)
    got, got_hidden = admit(cuda_runner, True, rows, prompts, with_hidden=True, graphs=True)
    assert_same_admission(got, want, got_hidden, want_hidden, rows, sizes, rows)


def launch_and_land(runner, pack, rows, prompts, capacity=None, graphs=False):
    """A fresh cache (marker-filled) after Prefiller.launch, a snapshot of it before the landing,
    then Landing.land. Returns (cache, snapshot, hidden, count)."""
    cache = runner.allocate_cache(MAX_REQS, MAX_LEN)
    cache.k.fill_(7.0)
    cache.v.fill_(7.0)
    prefiller = Prefiller(runner, cache, use_graphs=graphs, with_hidden=True, pack=pack)
    if graphs:
        prefiller.warm_up()
    if capacity is not None:
        prefiller.capacity = capacity
    landing = prefiller.launch(rows, [p[:-1] for p in prompts])
    if graphs:
        torch.cuda.synchronize()
    snapshot = (cache.k.clone(), cache.v.clone(), cache.cache_len.clone())
    hidden = landing.land()
    return cache, snapshot, hidden, landing.count


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize(
    "rows, sizes, capacity, count",
    [
        ([4, 1, 2], [9, 30, 2], None, 3),
        ([0, 5, 3, 2], [17, 1, 40, 25], 48, 2),  # packed: 16 + 0 tokens, then 39 do not fit
        ([3, 1], [1, 1], None, 2),  # one-token prompts: nothing to compute
    ],
)
def test_launch_then_land_equals_one_admission(runner, pack, rows, sizes, capacity, count):
    """An admission in two halves (the scheduler's overlapped refills): launch takes the prompts
    that fit one call and leaves the cache alone; land leaves what a one-call admission of those
    prompts leaves (K/V, cache_len, hidden states)."""
    prompts = prompts_of(sizes, seed=2)
    got, before, hidden, taken = launch_and_land(runner, pack, rows, prompts, capacity)
    assert taken == (count if pack else len(rows))
    assert (before[0] == 7.0).all() and (before[1] == 7.0).all() and (before[2] == 0).all()
    want, want_hidden = admit(runner, False, rows[:taken], prompts[:taken], with_hidden=True)
    sizes = sizes[:taken]
    assert_same_admission(got, want, hidden, want_hidden, rows[:taken], sizes, range(MAX_REQS))


def test_negative_control_a_landing_that_moves_nothing_differs(runner, monkeypatch):
    """The comparison above sees a landing that leaves the K/V in the scratch."""
    monkeypatch.setattr(Prefiller, "_land_packed", lambda self, packed, hidden: None)
    prompts = prompts_of([9, 30], seed=2)
    got, _, _, _ = launch_and_land(runner, True, [1, 4], prompts)
    want, _ = admit(runner, False, [1, 4], prompts)
    assert torch.equal(got.cache_len, want.cache_len)
    assert not torch.allclose(got.k[:, 4, :, :29], want.k[:, 4, :, :29])


def test_padded_graph_calls_do_not_launch(runner):
    """Padded graph calls share the scratch rows: no two-half admissions (defers is False)."""
    cache = runner.allocate_cache(2, 16)
    prefiller = Prefiller(runner, cache, use_graphs=False, pack=False)
    assert prefiller.defers
    prefiller.use_graphs = True  # (as on CUDA)
    assert not prefiller.defers
    with pytest.raises(RuntimeError, match="do not defer"):
        prefiller.launch([0], [[1, 2]])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="prefill graphs need a CUDA device")
def test_launch_on_a_second_stream_then_land_on_cuda(runner):
    """With graphs: the launch replays on the second stream; the landing waits for it."""
    import copy

    torch.backends.cuda.matmul.allow_tf32 = False
    cuda_runner = make_runner(copy.deepcopy(runner.model).to("cuda"), prefer="fast")
    rows, sizes = [4, 1, 2], [9, 30, 2]
    prompts = prompts_of(sizes, seed=5)
    got, before, hidden, taken = launch_and_land(cuda_runner, True, rows, prompts, graphs=True)
    assert taken == 3 and (before[0] == 7.0).all() and (before[2] == 0).all()
    want, want_hidden = admit(cuda_runner, False, rows, prompts, with_hidden=True, graphs=True)
    assert_same_admission(got, want, hidden, want_hidden, rows, sizes, rows)


def test_negative_control_packing_without_segments_differs(runner, monkeypatch):
    """The same call with every token in one segment (prompts attending to the earlier ones) must
    fail the comparison above: the test sees what packing without segments would do."""
    prompts = prompts_of([9, 30, 12])
    want, _ = admit(runner, False, [0, 1, 2], prompts)
    prefill = runner.prefill

    def one_segment(*args, segment_start=None, **kw):
        return prefill(*args, segment_start=torch.zeros_like(segment_start), **kw)

    monkeypatch.setattr(runner, "prefill", one_segment)
    got, _ = admit(runner, True, [0, 1, 2], prompts)
    torch.testing.assert_close(got.k[:, 0, :, :8], want.k[:, 0, :, :8])  # the first prompt
    assert (got.k[:, 1, :, :29] - want.k[:, 1, :, :29]).abs().max() > 1e-3


def test_plan_packs():
    assert plan_packs([300, 0, 500, 400], 1024) == [[0, 2], [3]]
    assert plan_packs([0, 0], 1024) == []
    assert plan_packs([1024, 1, 1023, 1], 1024) == [[0], [1, 2], [3]]
    lengths = [5, 700, 80, 1000, 3, 250]
    calls = plan_packs(lengths, 1024)
    assert [i for c in calls for i in c] == list(range(6))
    assert all(sum(lengths[i] for i in c) <= 1024 for c in calls)


def test_pack_buckets():
    assert [pack_bucket(n, 4096) for n in (1, 64, 65, 96, 97, 1400, 1672, 4000)] == [
        64, 64, 96, 96, 128, 1536, 2048, 4096
    ]  # fmt: skip
    assert pack_bucket(5000, 4608) == 4608  # the capacity caps
    buckets = pack_buckets(4608)
    assert buckets[0] == MIN_WIDTH and buckets[-1] == 4608
    for n in range(1, 4609, 7):  # every call's bucket is captured at warm-up, none pads > 1/2
        b = pack_bucket(n, 4608)
        assert b in buckets and b >= n and (n < MIN_WIDTH or b == 4608 or 2 * b <= 3 * n + 3)
    assert pack_capacity(16, 2048) == 32768 and pack_capacity(16, 200_000) == 200_000


def test_packs_by_default_on_cuda_with_several_slots(runner):
    """The default rule: a packing runner on CUDA with more than one slot (a one-slot cache admits
    one prompt at a time, faster padded); never on CPU; never for a runner that cannot pack. The
    device is faked: the rule reads runner.device and packs_prompts only."""
    from types import SimpleNamespace

    cuda = SimpleNamespace(device=torch.device("cuda"), packs_prompts=True)
    assert packs_by_default(cuda, 16) and packs_by_default(cuda, 2)
    assert not packs_by_default(cuda, 1)
    assert not packs_by_default(
        SimpleNamespace(device=torch.device("cuda"), packs_prompts=False), 16
    )
    assert not packs_by_default(runner, 16)  # the CPU runner
    assert runner.packs_prompts


def test_pack_needs_a_packing_runner():
    runner = make_runner(tiny_model("llama", seed=3), prefer="fast", exact=True)
    cache = runner.allocate_cache(2, 16)
    with pytest.raises(ValueError, match="does not pack"):
        Prefiller(runner, cache, use_graphs=False, pack=True)
    assert not Prefiller(runner, cache, use_graphs=False).pack
    with pytest.raises(ValueError, match="segment_start"):
        runner.prefill(
            torch.zeros(1, 4, dtype=torch.int32),
            torch.tensor([4]),
            cache,
            segment_start=torch.zeros(1, 4, dtype=torch.int32),
        )


def test_a_one_slot_cache_is_its_own_scratch(runner):
    """Padded graph calls into a one-slot cache write the slot itself (nothing to copy, no second
    cache); with more slots (or packed) the scratch is a cache of its own."""
    one = runner.allocate_cache(1, MAX_LEN)
    prefiller = Prefiller(runner, one, use_graphs=False, pack=False)
    prefiller._allocate_scratch()
    assert prefiller._scratch is one
    for slots, pack in ((2, False), (1, True)):
        cache = runner.allocate_cache(slots, MAX_LEN)
        prefiller = Prefiller(runner, cache, use_graphs=False, pack=pack)
        prefiller._allocate_scratch()
        assert prefiller._scratch is not cache


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="prefill graphs need a CUDA device")
def test_one_slot_graph_admissions_equal_eager_ones(runner):
    """B=1 as users run it: graph replays writing straight into the only slot, a long prompt then
    a shorter one (replays of reused graphs), leave the eager prefill's K/V and cache_len; the
    first prompt's K/V differ (negative control)."""
    import copy

    torch.backends.cuda.matmul.allow_tf32 = False
    cuda_runner = make_runner(copy.deepcopy(runner.model).to("cuda"), prefer="fast")
    first, second = prompts_of([40, 23], seed=9)

    def admit_one(graphs, prompts):
        cache = cuda_runner.allocate_cache(1, MAX_LEN)
        prefiller = Prefiller(cuda_runner, cache, use_graphs=graphs, pack=False)
        for p in prompts:
            ids = torch.tensor([p[:-1]], dtype=torch.int32, device="cuda")
            lens = torch.tensor([len(p) - 1], dtype=torch.int32, device="cuda")
            prefiller([0], torch.tensor([0], device="cuda"), ids, lens, [p[:-1]])
        return cache

    got = admit_one(True, [first, second])
    want = admit_one(False, [second])
    other = admit_one(False, [first])
    n = len(second) - 1
    assert int(got.cache_len[0]) == int(want.cache_len[0]) == n
    torch.testing.assert_close(got.k[:, 0, :, :n], want.k[:, 0, :, :n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.v[:, 0, :, :n], want.v[:, 0, :, :n], rtol=1e-5, atol=1e-5)
    assert (got.k[:, 0, :, :n] - other.k[:, 0, :, :n]).abs().max() > 1e-3


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 30])
def test_landing_reads_its_per_token_parts_at_16_byte_offsets(runner, monkeypatch, total):
    """A packed call's slots and columns (what kv_scatter reads at landing) start at multiples
    of 16 bytes for any token count when the call's width is a graph bucket (a multiple of 4):
    Triton specializes pointers on that alignment, and parts at odd offsets compiled kv_scatter
    anew mid-run. They sit where _packed_call writes them (an arange buffer shows the offsets).
    Control: the same reads one entry further would not be aligned."""
    import samgpu.decoding.prefill as prefill

    seen = []
    monkeypatch.setattr(prefill, "kv_scatter", lambda *a: seen.append(a[4:7]))
    cache = runner.allocate_cache(MAX_REQS, MAX_LEN)
    prefiller = Prefiller(runner, cache, use_graphs=False, pack=True)
    width = 32
    meta = torch.arange(5 * width + 16, dtype=torch.int32)
    prefiller._land_packed(prefill._Packed(meta, width, total, cache, None), None)
    slot, col, n = seen[0]
    assert n == total and slot.numel() == col.numel() == total
    for part in (slot, col):
        assert part.storage_offset() * 4 % 16 == 0
        assert (part.storage_offset() + 1) * 4 % 16 != 0  # control
    step = -(-total // 4) * 4
    assert int(slot[0]) == 2 * width + 4 and int(col[0]) == 2 * width + 4 + step
