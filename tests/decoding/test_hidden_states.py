"""Hidden states for model-based drafters (an EAGLE head): the runners' prefill `hidden_out`
equals transformers' last hidden states, a runner with `input_proj` equals the EAGLE head's own
forward, and the engine hands a `needs_hidden` drafter the prompts' hidden states at start."""

import pytest
import torch

from samgpu.decoding.engine import Engine
from samgpu.decoding.runners import make_runner
from samgpu.decoding.runners.llama import LlamaRunner
from samgpu.drafters.parts.eagle_model import EagleHead, head_config_from_target
from samgpu.drafters.protocol import DrafterBase
from tests.decoding.conftest import TINY_VOCAB


def hf_hidden(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.model(torch.tensor([ids])).last_hidden_state[0]


@pytest.mark.parametrize("prefer", ["fast", "generic"])
def test_prefill_hidden_out_is_the_last_hidden_state(tiny_llama, prefer):
    runner = make_runner(tiny_llama, prefer=prefer)
    seqs = [list(range(3, 12)), [7, 1, 9, 4]]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int32)
    ids = torch.zeros(2, 9, dtype=torch.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    hidden = torch.full((2, 12, runner.hidden_size), float("nan"))
    runner.prefill(ids, lengths, runner.allocate_cache(2, 16), hidden_out=hidden)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(
            hidden[i, : len(s)], hf_hidden(tiny_llama, s), rtol=1e-5, atol=1e-5
        )
    assert hidden[:, 9:].isnan().all()  # columns past the prompt width are not written


def test_input_proj_runner_equals_the_heads_own_forward(tiny_llama):
    """Prefill of 5 pairs then a 3-pair chain through the runner = EagleHead.forward over all 8."""
    torch.manual_seed(3)
    emb, lm = tiny_llama.model.embed_tokens.weight.detach(), tiny_llama.lm_head.weight.detach()
    head = EagleHead(head_config_from_target(tiny_llama.config), emb, lm)
    head.reset_parameters(seed=5)
    runner = LlamaRunner(head.model, input_proj=head.fc)
    tokens = torch.randint(0, TINY_VOCAB, (1, 8), dtype=torch.int32)
    feats = torch.randn(1, 8, runner.hidden_size)
    with torch.no_grad():
        want = head(tokens.long(), feats)
    cache = runner.allocate_cache(1, 16)
    got = torch.zeros(1, 8, runner.hidden_size)
    runner.prefill(tokens[:, :5], torch.tensor([5], dtype=torch.int32), cache,
                   hidden_in=feats[:, :5], hidden_out=got[:, :5])  # fmt: skip
    mask = torch.tril(torch.ones(3, 3, dtype=torch.bool))[None]
    positions = torch.arange(5, 8, dtype=torch.int32)[None]
    runner.forward_tree(tokens[:, 5:], positions, mask, cache, None, got[:, 5:],
                        hidden_in=feats[:, 5:])  # fmt: skip
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="hidden_in"):
        runner.forward_tree(tokens[:, 5:], positions, mask, cache, None, got[:, 5:])


class _Recorder(DrafterBase):
    name = "hidden-recorder"
    needs_hidden = True

    def __init__(self):
        self.seen = []

    def start(self, state, new):
        self.seen.append((new.rows.tolist(), new.hidden.clone()))

    def propose(self, state, tree):
        tree.tokens[:, 0].copy_(state.root)
        tree.num_nodes.fill_(1)


def test_engine_gives_the_prompts_hidden_states_to_start(tiny_llama):
    """Scattered refill rows get their own prompt's hidden states (prompt[:-1]), row i for
    rows[i]; a drafter that does not ask gets None."""
    runner = make_runner(tiny_llama)
    drafter = _Recorder()
    engine = Engine(runner, drafter, max_reqs=4, max_len=32)
    from samgpu.decoding.config import GenerationConfig

    engine.configure(GenerationConfig(max_new_tokens=4), 4)
    prompts = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12]]
    engine.prefill([3, 0, 2], prompts)
    rows, hidden = drafter.seen[-1]
    assert rows == [3, 0, 2] and hidden.shape[:2] == (3, 4)
    for i, p in enumerate(prompts):
        torch.testing.assert_close(
            hidden[i, : len(p) - 1], hf_hidden(tiny_llama, p[:-1]), rtol=1e-5, atol=1e-5
        )
    plain = DrafterBase()
    plain.propose = _Recorder.propose.__get__(plain)
    seen = []
    plain.start = lambda state, new: seen.append(new.hidden)
    engine = Engine(runner, plain, max_reqs=2, max_len=32)
    engine.configure(GenerationConfig(max_new_tokens=4), 2)
    engine.prefill([1], [[4, 5, 6]])
    assert seen == [None]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="prefill graphs need a CUDA device")
def test_prefill_graphs_hand_over_the_same_hidden_states_as_eager(tiny_llama):
    import copy

    runner = make_runner(copy.deepcopy(tiny_llama).to("cuda"))
    prompts = [[5, 6, 7, 8, 9] * 9, [3, 4], [10, 11, 12] * 30]
    seen = {}
    for graphs in (False, True):
        drafter = _Recorder()
        engine = Engine(runner, drafter, max_reqs=4, max_len=128, use_cuda_graphs=graphs)
        from samgpu.decoding.config import GenerationConfig

        engine.configure(GenerationConfig(max_new_tokens=4), 4)
        engine.prefill([3, 0, 2], prompts)
        seen[graphs] = drafter.seen[-1][1]
    for i, p in enumerate(prompts):
        torch.testing.assert_close(seen[True][i, : len(p) - 1], seen[False][i, : len(p) - 1])
