"""GPU-only runner properties (skipped without CUDA): the verify step makes no host sync, replays
from a CUDA graph with the same logits as eager, and bf16 logits of the fast runner stay close to
transformers' own bf16 forward (same argmax wherever transformers' top-2 gap is not a near-tie)."""

import pytest
import torch

from samgpu.decoding.runner import make_runner
from samgpu.decoding.runner_llama import LlamaRunner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def chain_inputs(b, n, cache_len, vocab):
    g = torch.Generator(device="cuda").manual_seed(0)
    tokens = torch.randint(0, vocab, (b, n), dtype=torch.int32, device="cuda", generator=g)
    positions = (cache_len[:, None] + torch.arange(n, device="cuda")).to(torch.int32)
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool, device="cuda")).expand(b, n, n)
    return tokens, positions, mask.contiguous()


@pytest.fixture(scope="module")
def smollm2_bf16():
    from samgpu.models import load_default

    model, _ = load_default(device="cuda", dtype=torch.bfloat16)
    return model


def prefilled(runner, b=3, t=40, max_len=128):
    cache = runner.allocate_cache(b, max_len)
    ids = torch.randint(0, runner.vocab_size, (b, t), dtype=torch.int32, device="cuda")
    lengths = torch.tensor([t, t // 2, 1], dtype=torch.int32, device="cuda")[:b]
    runner.prefill(ids, lengths, cache)
    return cache, ids, lengths


def test_verify_step_is_sync_free_and_graph_replay_matches_eager(smollm2_bf16):
    runner = make_runner(smollm2_bf16)
    assert isinstance(runner, LlamaRunner) and runner.graph_safe
    cache, _, lengths = prefilled(runner)
    tokens, positions, mask = chain_inputs(3, 8, lengths, runner.vocab_size)
    eager = torch.empty(3, 8, runner.vocab_size, device="cuda")
    runner.forward_tree(tokens, positions, mask, cache, eager)  # compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        runner.forward_tree(tokens, positions, mask, cache, eager)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out = torch.zeros_like(eager)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        runner.forward_tree(tokens, positions, mask, cache, out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        runner.forward_tree(tokens, positions, mask, cache, out)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


def test_bf16_fast_runner_tracks_transformers(smollm2_bf16):
    """Chains after a prefill: argmax equal to transformers' bf16 forward except at near-ties."""
    model = smollm2_bf16
    runner = LlamaRunner(model)
    cache, ids, lengths = prefilled(runner, b=1, t=40)
    tokens = ids[:, 30:40]
    cache.cache_len.fill_(30)
    positions = (30 + torch.arange(10, device="cuda", dtype=torch.int32))[None]
    mask = torch.tril(torch.ones(1, 10, 10, dtype=torch.bool, device="cuda"))
    out = torch.empty(1, 10, runner.vocab_size, device="cuda")
    runner.forward_tree(tokens, positions, mask, cache, out)
    with torch.no_grad():
        want = model(ids[:, :40].long()).logits[0, 30:40].float()
    top2 = want.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1
    assert torch.equal(out[0].argmax(-1)[clear], want.argmax(-1)[clear])
    assert (out[0] - want).abs().max() < 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_kernels_match_torch_references_on_gpu(dtype, monkeypatch):
    """Tiny random Llama on CUDA: the Triton kernels (default) against the torch references
    (SAMGPU_BACKEND=ref), same inputs."""
    from tests.decoding.conftest import tiny_model

    model = tiny_model("llama").to("cuda", dtype)
    runner = LlamaRunner(model)
    results = []
    for backend in ("auto", "ref"):
        monkeypatch.setenv("SAMGPU_BACKEND", backend)
        torch.manual_seed(0)
        cache, _, lengths = prefilled(runner, b=3, t=20, max_len=64)
        tokens, positions, mask = chain_inputs(3, 6, lengths, runner.vocab_size)
        out = torch.empty(3, 6, runner.vocab_size, device="cuda")
        results.append(runner.forward_tree(tokens, positions, mask, cache, out).clone())
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(results[0], results[1], rtol=tol, atol=tol)
