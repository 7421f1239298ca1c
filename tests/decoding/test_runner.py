"""Runners: prefill + verify-step logits equal transformers' own logits for the same model.

Worked example of the contract: prompts [a b c d e f g | x y z w] and [h i j | k l m n], cache
holding 7 and 3 tokens after prefill; a 4-token chain per sequence verified in one forward_tree
call gives, at chain node t, the logits transformers computes at position cache_len + t of the full
sequence.
"""

import warnings

import pytest
import torch

from samgpu.decoding.runners import KVCache, make_runner
from samgpu.decoding.runners.generic import GenericRunner
from samgpu.decoding.runners.llama import LlamaRunner
from tests.decoding.conftest import TINY_VOCAB, tiny_model

FAST_KINDS = ["llama", "llama3", "qwen2", "qwen3", "mistral"]


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def chain_mask(b: int, n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n, dtype=torch.bool)).expand(b, n, n).contiguous()


def prefill_and_chain(runner, seqs: list[list[int]], prefix_lens: list[int], n: int, max_len=32):
    """Prefill seqs[b][:prefix_lens[b]] (right-padded), then verify the next n tokens as a chain."""
    b = len(seqs)
    width = max(prefix_lens)
    ids = torch.zeros(b, width, dtype=torch.int32)
    for i, (s, p) in enumerate(zip(seqs, prefix_lens, strict=True)):
        ids[i, :p] = torch.tensor(s[:p], dtype=torch.int32)
    lengths = torch.tensor(prefix_lens, dtype=torch.int32)
    cache = runner.allocate_cache(b, max_len)
    runner.prefill(ids, lengths, cache)
    assert torch.equal(cache.cache_len, lengths)
    tokens = torch.tensor([s[p : p + n] for s, p in zip(seqs, prefix_lens, strict=True)])
    positions = lengths[:, None] + torch.arange(n, dtype=torch.int32)
    out = torch.full((b, n, runner.vocab_size), float("nan"))
    runner.forward_tree(tokens.int(), positions, chain_mask(b, n), cache, out)
    return out, cache


@pytest.mark.parametrize(
    "kind, prefer",
    [(kind, prefer) for kind in FAST_KINDS for prefer in ("fast", "generic")]
    + [("qwen2", "fast-triton"), ("qwen3", "fast-triton")],
)
def test_prefill_then_chain_matches_transformers(kind, prefer, monkeypatch):
    """Ragged batch of 3: 7, 3 and 0 tokens in the cache (an empty prefix: the root is the
    prompt's only token), then a 4-node chain each. fast-triton runs every Triton kernel of the
    fast runner (the interpreter on CPU)."""
    if prefer == "fast-triton":
        monkeypatch.setenv("SAMGPU_BACKEND", "triton")
        prefer = "fast"
    model = tiny_model(kind)
    runner = make_runner(model, prefer=prefer)
    assert isinstance(runner, LlamaRunner if prefer == "fast" else GenericRunner)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, TINY_VOCAB, (11,), generator=g).tolist() for _ in range(3)]
    prefix = [7, 3, 0]
    out, _ = prefill_and_chain(runner, seqs, prefix, 4)
    for b, (s, p) in enumerate(zip(seqs, prefix, strict=True)):
        want = hf_logits(model, s[: p + 4])[p : p + 4]
        torch.testing.assert_close(out[b], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefer", ["fast", "generic"])
def test_successive_steps_reuse_the_written_cache(tiny_llama, prefer):
    """Step 1 verifies a 3-chain; all accepted (cache_len += 3, the K/V already sit at the right
    slots); step 2 verifies the next 2 tokens: logits equal transformers' on the whole text."""
    runner = make_runner(tiny_llama, prefer=prefer)
    seq = list(range(5, 15))
    _, cache = prefill_and_chain(runner, [seq], [4], 3)
    cache.cache_len += 3
    out = torch.empty(1, 2, runner.vocab_size)
    tokens = torch.tensor([seq[7:9]], dtype=torch.int32)
    positions = torch.tensor([[7, 8]], dtype=torch.int32)
    runner.forward_tree(tokens, positions, chain_mask(1, 2), cache, out)
    torch.testing.assert_close(out[0], hf_logits(tiny_llama, seq[:9])[7:9], rtol=1e-5, atol=1e-5)


def test_default_smollm2_matches_transformers(default_model_fp32):
    """The real default model (30 layers, 9/3 heads, tied embeddings), fp32: fast runner logits
    over a chat prompt equal transformers' to float rounding."""
    model, tok = default_model_fp32
    runner = make_runner(model)
    assert isinstance(runner, LlamaRunner)
    assert runner.vocab_size == 49152 and runner.num_layers == 30
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Name three colours."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    short = ids[:20]
    out, _ = prefill_and_chain(runner, [ids, short], [len(ids) - 5, 15], 5, max_len=64)
    want_long = hf_logits(model, ids)[-5:]
    want_short = hf_logits(model, short)[15:20]
    scale = want_long.abs().max()
    torch.testing.assert_close(out[0], want_long, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(out[1], want_short, rtol=1e-4, atol=1e-4 * scale)
    assert torch.equal(out[0].argmax(-1), want_long.argmax(-1))


def test_greedy_decoding_matches_transformers_generate(default_model_fp32):
    """Autoregressive greedy decoding with the fast runner alone (one-node trees, cache_len += 1
    per step), two prompts of different lengths in one batch: the same 8 tokens as transformers'
    greedy generate for each prompt."""
    model, tok = default_model_fp32
    runner = make_runner(model)
    prompts = [
        tok(p, add_special_tokens=False)["input_ids"]
        for p in ("The capital of France is", "def fibonacci(n):")
    ]
    steps = 8
    cache = runner.allocate_cache(2, 64)
    ids = torch.zeros(2, max(map(len, prompts)), dtype=torch.int32)
    for b, p in enumerate(prompts):
        ids[b, : len(p) - 1] = torch.tensor(p[:-1])
    runner.prefill(ids, torch.tensor([len(p) - 1 for p in prompts], dtype=torch.int32), cache)
    root = torch.tensor([[p[-1]] for p in prompts], dtype=torch.int32)
    mask = torch.ones(2, 1, 1, dtype=torch.bool)
    out = torch.empty(2, 1, runner.vocab_size)
    generated = []
    for _ in range(steps):
        runner.forward_tree(root, cache.cache_len[:, None].clone(), mask, cache, out)
        root = out.argmax(-1).to(torch.int32)
        generated.append(root[:, 0])
        cache.cache_len += 1
    ours = torch.stack(generated, dim=1)
    for b, p in enumerate(prompts):
        want = model.generate(
            torch.tensor([p]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps
        )[0, len(p) :]
        assert ours[b].tolist() == want.tolist()


def test_unsupported_architecture_falls_back_with_one_warning():
    """GPT-2 is not Llama-family: make_runner warns once, returns the generic runner, and that
    runner is still exact."""
    model = tiny_model("gpt2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = make_runner(model)
    messages = [str(w.message) for w in caught if "samgpu" in str(w.message)]
    assert len(messages) == 1 and "generic" in messages[0] and "gpt2" in messages[0]
    assert isinstance(runner, GenericRunner) and not runner.graph_safe
    seq = list(range(20, 30))
    out, _ = prefill_and_chain(runner, [seq], [6], 4)
    torch.testing.assert_close(out[0], hf_logits(model, seq)[6:10], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not support"):
        make_runner(model, prefer="fast")
    with pytest.raises(ValueError, match="prefer="):
        make_runner(model, prefer="fastest")


def test_unsupported_llama_variant_is_named():
    """A Llama with a GELU MLP is not the fast path's maths: the reason names it."""
    model = tiny_model("llama")
    model.config.hidden_act = "gelu"
    assert "hidden_act" in LlamaRunner.unsupported_reason(model)
    with pytest.warns(UserWarning, match="hidden_act"):
        assert isinstance(make_runner(model), GenericRunner)


def test_fast_runner_shares_the_models_weights():
    """Fused q/k/v and gate/up matrices: the model's own parameters become views of them (no copy),
    and the transformers model still computes the same logits."""
    model = tiny_model("qwen2")
    before = hf_logits(model, [1, 2, 3, 4])
    runner = LlamaRunner(model)
    attn = model.model.layers[0].self_attn
    fused = runner.layers[0].qkv
    assert attn.q_proj.weight.data_ptr() == fused.data_ptr()
    assert attn.k_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    assert torch.equal(hf_logits(model, [1, 2, 3, 4]), before)


def test_sliding_window_limits_the_fast_cache():
    """Mistral-style sliding window 16: full attention equals it only up to 16 slots."""
    model = tiny_model("mistral")
    model.config.sliding_window = 16
    runner = LlamaRunner(model)
    assert isinstance(runner.allocate_cache(2, 16), KVCache)
    with pytest.raises(ValueError, match="sliding window"):
        runner.allocate_cache(2, 17)


@pytest.mark.parametrize("prefer", ["fast", "generic"])
def test_bad_inputs_raise_value_error_with_shapes(tiny_llama, prefer):
    runner = make_runner(tiny_llama, prefer=prefer)
    cache = runner.allocate_cache(2, 16)
    b, n, v = 2, 3, runner.vocab_size
    tokens = torch.zeros(b, n, dtype=torch.int32)
    positions = torch.zeros(b, n, dtype=torch.int32)
    mask = chain_mask(b, n)
    out = torch.empty(b, n, v)
    cases = [
        ((tokens, positions[:, :2], mask, cache, out), r"positions must be \[B=2, N=3\]"),
        ((tokens, positions, mask.int(), cache, out), "tree_mask must be"),
        ((tokens, positions, mask, cache, out.double()), "out must be"),
        ((tokens, positions, mask, cache, torch.empty(b, n, v + 1)), "V=128"),
        ((tokens.float(), positions, mask, cache, out), "tokens must be"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            runner.forward_tree(*args)
    small = runner.allocate_cache(1, 16)
    with pytest.raises(ValueError, match="exceeds the cache's max_reqs=1"):
        runner.forward_tree(tokens, positions, mask, small, out)
    with pytest.raises(ValueError, match="max_len=16"):
        runner.prefill(torch.zeros(2, 17, dtype=torch.int32), torch.tensor([17, 1]), cache)
    with pytest.raises(ValueError, match="lengths must be"):
        runner.prefill(torch.zeros(2, 4, dtype=torch.int32), torch.tensor([4]), cache)


def test_rows_not_live_skip_their_cached_prefix(tiny_llama):
    """forward_tree(live=...): a row that is not live (a finished or empty slot) attends to no
    cached prefix: changing its cached keys at slots 2-3 (a 4-token prefix; with no prefix its
    2 tree nodes read slots 0-1) leaves its logits unchanged, and the live row's logits are
    exactly those of a call without `live`. Negative control: without `live` the row reads its
    prefix and its logits change."""
    runner = LlamaRunner(tiny_llama)
    seqs, n = [[3, 9, 4, 7, 1, 8], [5, 2, 6, 2, 5, 9]], 2

    def step(live, poison):
        cache = runner.allocate_cache(2, 16)
        ids = torch.tensor([s[:4] for s in seqs], dtype=torch.int32)
        runner.prefill(ids, torch.tensor([4, 4], dtype=torch.int32), cache)
        cache.k[:, 1, :, 2:4] = poison
        tokens = torch.tensor([s[4 : 4 + n] for s in seqs], dtype=torch.int32)
        positions = cache.cache_len[:, None] + torch.arange(n, dtype=torch.int32)
        out = torch.zeros(2, n, runner.vocab_size)
        runner.forward_tree(tokens, positions, chain_mask(2, n), cache, out, live=live)
        return out

    live = torch.tensor([True, False])
    skipped_a, skipped_b = step(live, 3.0), step(live, -3.0)
    plain_a, plain_b = step(None, 3.0), step(None, -3.0)
    assert torch.equal(skipped_a[1], skipped_b[1])
    assert torch.equal(skipped_a[0], plain_a[0])
    assert not torch.allclose(plain_a[1], plain_b[1])


@pytest.mark.parametrize("prefer", ["fast", "generic"])
def test_logits_in_the_model_dtype_equal_the_float32_buffer(prefer):
    """A bfloat16 model writes logits into a bfloat16 `out` (the fast runner: straight from its
    lm_head GEMM, no copy); widened, they equal the float32 `out` of the same step exactly, so
    greedy argmax and sampling see the same values (and every slot of the NaN-filled buffer
    is written: rows and nodes differ)."""
    model = tiny_model("llama").to(torch.bfloat16)
    runner = make_runner(model, prefer=prefer)
    seqs = [list(range(3, 14)), list(range(20, 31))]
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        cache = runner.allocate_cache(2, 32)
        ids = torch.tensor([s[:5] for s in seqs], dtype=torch.int32)
        runner.prefill(ids, torch.tensor([5, 5], dtype=torch.int32), cache)
        tokens = torch.tensor([s[5:9] for s in seqs], dtype=torch.int32)
        positions = torch.full((2, 1), 5, dtype=torch.int32) + torch.arange(4, dtype=torch.int32)
        out = torch.full((2, 4, runner.vocab_size), float("nan"), dtype=dtype)
        runner.forward_tree(tokens, positions, chain_mask(2, 4), cache, out)
        outs[dtype] = out.float()
    got = outs[torch.bfloat16]
    assert not got.isnan().any()
    assert not torch.equal(got[0], got[1]) and not torch.equal(got[:, 0], got[:, 1])
    assert torch.equal(got, outs[torch.float32])
