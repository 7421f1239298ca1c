"""EAGLE drafting inside the captured step: no host reads in its propose / update code (a static
scan, everywhere), and on CUDA whole steps of `eagle`, `sam+eagle` and `merged+eagle` replayed as
CUDA graphs under torch.cuda.set_sync_debug_mode("error"), with greedy outputs equal to `ar`'s
(float32, graphs on)."""

from __future__ import annotations

import pytest
import torch

from tests.drafters.test_eagle_lossless import (
    MAX_NEW,
    METHODS,
    OPTIONS,
    TARGET_SCALE,
    new_head,
    prompts_of,
    write_head,
)
from tests.test_no_sync import _violations, steps_under_sync_error_mode


def test_eagle_step_code_has_no_host_reads():
    from samgpu.drafters import eagle, eagle_sam
    from samgpu.drafters.parts import eagle_draft
    from samgpu.kernels import eagle_expand

    functions = [
        eagle_draft.grow_tree,
        eagle_expand.eagle_expand,
        eagle_expand.eagle_expand_triton,
        eagle_expand.eagle_expand_ref,
        eagle_draft.select_tree,
        eagle_draft.EagleDraft.propose,
        eagle_draft.EagleDraft.update,
        eagle_draft.EagleDraft._expander,
        eagle_draft.EagleDraft._top_children,
        eagle.EagleDrafter.propose,
        eagle.EagleDrafter.update,
        eagle_sam.SamEagleDrafter.propose,
        eagle_sam.MergedEagleDrafter.propose,
        eagle_sam.SamEagleDrafter.update,
    ]
    assert [v for fn in functions for v in _violations(fn)] == []


@pytest.fixture(scope="module")
def cuda_target(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs and set_sync_debug_mode need CUDA")
    from samgpu.decoding.runners import make_runner
    from tests.decoding.conftest import tiny_model

    model = tiny_model("llama")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(TARGET_SCALE)
    path = tmp_path_factory.mktemp("eagle") / "head.safetensors"
    write_head(path, new_head(model), model)
    return make_runner(model.to("cuda")), str(path)


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_graph_steps_without_sync_equal_ar(cuda_target, method):
    from samgpu.decoding.config import GenerationConfig
    from samgpu.factory import build_decoder

    runner, head = cuda_target
    prompts = prompts_of([23, 1, 9], seed=3)

    def decoder(name, **options):
        return build_decoder(runner, name, batch_size=3, max_len=128, options=options)

    config = GenerationConfig(max_new_tokens=MAX_NEW, speculation="always")
    ar = decoder("ar").generate(prompts, config).tokens
    dec = decoder(method, head=head, **OPTIONS)
    assert dec.generate(prompts, config).tokens == ar  # compiles kernels, captures graphs
    assert dec.engine.use_cuda_graphs and dec.engine.graph_keys
    steps_under_sync_error_mode(dec.engine, config, prompts)
