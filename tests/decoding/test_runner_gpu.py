"""GPU-only runner properties (skipped without CUDA): the verify step makes no host sync, replays
from a CUDA graph with the same logits as eager, and bf16 logits of the fast runner err from an fp32
forward no more than ~2x transformers' own bf16 forward does (same argmax outside near-ties)."""

import copy

import pytest
import torch

from samgpu.decoding.runners import make_runner
from samgpu.decoding.runners.llama import LlamaRunner

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
    """Chains after a prefill, judged the flash-attention way against an fp32 forward of the same
    (bf16-rounded) weights: our bf16 logits may err at most ~2x as much as transformers' own bf16
    forward (plus a small atol), and the argmax must match the fp32 one wherever the fp32 top-2 gap
    exceeds both errors. A plain argmax comparison with transformers' bf16 fails at gaps of ~0.1,
    which is bf16 rounding noise on logits of magnitude ~20."""
    model = smollm2_bf16
    runner = LlamaRunner(model)
    start, n = 40, 32  # 32 positions: random tokens make many near-ties, the argmax needs some
    cache, ids, lengths = prefilled(runner, b=1, t=start + n)
    tokens = ids[:, start:]
    cache.cache_len.fill_(start)
    positions = (start + torch.arange(n, device="cuda", dtype=torch.int32))[None]
    mask = torch.tril(torch.ones(1, n, n, dtype=torch.bool, device="cuda"))
    out = torch.empty(1, n, runner.vocab_size, device="cuda")
    runner.forward_tree(tokens, positions, mask, cache, out)
    ours = out[0]
    # nn.Module.float: transformers' override refuses models loaded from a GGUF ("quantized").
    reference = torch.nn.Module.float(copy.deepcopy(model))
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # a true fp32 yardstick, no TF32
    try:
        with torch.no_grad():
            hf = model(ids.long()).logits[0, start:].float()
            ref = reference(ids.long()).logits[0, start:].double()
    finally:
        torch.set_float32_matmul_precision(precision)
    del reference
    our_err = (ours.double() - ref).abs().amax(-1)  # [n] per position
    hf_err = (hf.double() - ref).abs().amax(-1)
    assert our_err.max() <= 2 * hf_err.max() + 0.05, (our_err.tolist(), hf_err.tolist())
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > torch.maximum(our_err, hf_err)
    assert clear.sum() >= 3, "too few positions without a near-tie to judge the argmax"
    assert torch.equal(ours.argmax(-1)[clear], ref.argmax(-1)[clear])


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
