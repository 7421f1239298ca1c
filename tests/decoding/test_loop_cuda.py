"""The loop on CUDA (skipped on CPU): a whole step captured in one CUDA graph gives exactly the
eager step's tokens, greedy and seeded sampling (the same kernels, the same keyed noise), across
successive batches and repeated calls that replay the captured graphs; greedy equals transformers
`generate` on a tiny random Llama in fp32."""

from __future__ import annotations

import copy

import pytest
import torch

from samgpu.decoding.config import GenerationConfig
from samgpu.factory import build_decoder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device"),
]

PROMPTS = [[1, 2, 3, 4, 5], [9], [7, 8, 9, 10, 11, 12, 13], [4, 4]]


@pytest.fixture(scope="module")
def cuda_llama(tiny_llama):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = copy.deepcopy(tiny_llama).to("cuda")
    refs = []
    with torch.no_grad():
        for p in PROMPTS:
            out = model.generate(
                torch.tensor([p], device="cuda"),
                attention_mask=torch.ones(1, len(p), dtype=torch.long, device="cuda"),
                max_new_tokens=20,
                min_new_tokens=20,
                do_sample=False,
                pad_token_id=0,
            )
            refs.append(out[0, len(p) :].tolist())
    return model, refs


def _decoder(model, refs, graphs, branching):
    from samgpu.decoding.runners import make_runner

    runner = make_runner(model)
    options = dict(
        references=list(zip(PROMPTS, refs, strict=True)),
        depth=4,
        branching=branching,
        error_rate=0.3,
    )
    return build_decoder(
        runner, "test", batch_size=3, max_len=64, options=options, use_cuda_graphs=graphs
    )


@pytest.mark.parametrize("branching", [False, True], ids=["chain", "tree"])
def test_graphs_equal_eager_and_hf_greedy(cuda_llama, branching):
    model, refs = cuda_llama
    cfg = GenerationConfig(max_new_tokens=20, speculation="always")  # drafting graphs only
    eager = _decoder(model, refs, False, branching).generate(PROMPTS, cfg).tokens
    dec = _decoder(model, refs, True, branching)
    first = dec.generate(PROMPTS, cfg).tokens  # warm-up, capture (B=3 and B=1), replays
    again = dec.generate(PROMPTS, cfg).tokens  # replays only
    assert eager == first == again == refs
    assert len(dec.engine.graph_keys) == 2  # (B=3 and B=1) x drafting


def test_graphs_equal_eager_sampling(cuda_llama):
    model, refs = cuda_llama
    cfg = GenerationConfig(max_new_tokens=20, temperature=0.9, top_k=20, seed=3)
    eager = _decoder(model, refs, False, True).generate(PROMPTS, cfg).tokens
    dec = _decoder(model, refs, True, True)
    assert dec.generate(PROMPTS, cfg).tokens == eager
    assert dec.generate(PROMPTS, cfg).tokens == eager


def test_sampling_after_captured_greedy_graphs(cuda_llama):
    """A decoder that captured greedy graphs (as `samgpu generate`'s warm-up does), then samples,
    then decodes greedily again: the sampling buffers join without breaking the graph pool (it
    raised an allocator assert at the first sampling capture), and every output equals eager."""
    model, refs = cuda_llama
    greedy = GenerationConfig(max_new_tokens=20, speculation="always")
    sample = GenerationConfig(max_new_tokens=20, temperature=0.9, top_k=20, seed=3)
    eager = _decoder(model, refs, False, True).generate(PROMPTS, sample).tokens
    dec = _decoder(model, refs, True, True)
    assert dec.generate(PROMPTS, greedy).tokens == refs
    assert dec.generate(PROMPTS, sample).tokens == eager
    assert dec.generate(PROMPTS, sample).tokens == eager
    assert dec.generate(PROMPTS, greedy).tokens == refs


MORE = [p + [k] for k in (2, 5, 6) for p in PROMPTS][:10]


def test_overlapped_admissions_equal_model_greedy(cuda_llama):
    """Continuous batching on CUDA with refills prefilled on a second stream beside the live
    slots' step graphs (packed graph calls) and landed mid-window or at the next check: the same
    tokens as with one-call admissions and as the model's greedy decoding cut at an EOS id (so
    that requests end at different steps and refills meet live slots)."""
    from samgpu.decoding.runners import make_runner

    model, _ = cuda_llama
    refs = []  # greedy by hand: generate's min_new_tokens would mask the config's EOS id (2)
    with torch.no_grad():
        for p in MORE:
            seq = list(p)
            for _ in range(20):
                seq.append(int(model(torch.tensor([seq], device="cuda")).logits[0, -1].argmax()))
            refs.append(seq[len(p) :])

    def cut(eos):  # greedy decoding with an EOS id is the greedy continuation cut at its first
        return [r[: r.index(eos) + 1] if eos in r else r for r in refs]

    # the EOS id that ends the requests at the most different steps
    eos = max(sorted({t for r in refs for t in r}), key=lambda e: len({len(w) for w in cut(e)}))
    want = cut(eos)
    assert len({len(w) for w in want}) > 1
    runner = make_runner(model)
    tree = dict(references=list(zip(MORE, refs, strict=True)), depth=4, branching=True)
    for method, options in (("ar", {}), ("test", dict(tree, error_rate=0.3))):
        dec = build_decoder(runner, method, batch_size=3, max_len=64, options=options)
        assert dec.engine.defers_prefill
        for overlap in (True, False):
            cfg = GenerationConfig(
                max_new_tokens=20, eos_token_ids=(eos,), continuous=True, check_every=2,
                overlap_admissions=overlap,
            )  # fmt: skip
            assert dec.generate(MORE, cfg).tokens == want, (method, overlap)


def test_step_and_prefill_graphs_are_captured_on_private_streams(cuda_llama, monkeypatch):
    """Every graph the engine captures (step graphs; prefill graphs, which replay beside them)
    is captured on its family's private stream (samgpu/decoding/streams.py), never on one from
    torch's pool, whose streams repeat: two graph families on one stream share one cuBLAS
    workspace and their GEMMs race."""
    from samgpu.decoding.streams import private_stream

    model, refs = cuda_llama
    streams = []
    graph_init = torch.cuda.graph.__init__

    def recording(self, cuda_graph, pool=None, stream=None, **kw):
        streams.append(None if stream is None else stream.cuda_stream)
        graph_init(self, cuda_graph, pool=pool, stream=stream, **kw)

    monkeypatch.setattr(torch.cuda.graph, "__init__", recording)
    dec = _decoder(model, refs, True, True)
    dec.engine.warm_up(3)
    dec.generate(PROMPTS, GenerationConfig(max_new_tokens=8, continuous=True))
    step, prefill = (
        private_stream("cuda", role).cuda_stream for role in ("step graphs", "prefill graphs")
    )
    assert streams and set(streams) == {step, prefill}, (streams, step, prefill)
