"""EAGLE head training (samgpu.eagle) on CPU: a tiny random Llama target and sequences it generated
greedily itself, so the pairs are learnable without a tokenizer; the command end to end on a tiny
checkpoint with the default tokenizer."""

import gzip
import hashlib
import json

import pytest
import torch

from samgpu import cli
from samgpu.drafters.parts.eagle_model import head_for_target, load_head, read_head, save_head
from samgpu.eagle.data import (
    Example,
    make_example,
    shuffled_batches,
    sorted_batches,
    split_indices,
)
from samgpu.eagle.features import extract_features, pair_batch
from samgpu.eagle.loop import TrainConfig, lr_at, train_head
from samgpu.eagle.objective import pair_terms
from samgpu.eagle.train import main as train_main
from tests.api import fixtures

tiny_model_dir = fixtures.tiny_model_dir

NUM_SEQS, PROMPT_LEN, NEW_TOKENS, EOS = 48, 6, 26, 2


@pytest.fixture(scope="module")
def target():
    """A random Llama (hidden 64, 2 layers, vocab 128) whose lm_head is scaled up so that its
    greedy continuations vary (with the init's tiny logits, a tied model copies its last token)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def features(target):
    """(train, val) Features of sequences the target wrote greedily from random prompts."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (NUM_SEQS, PROMPT_LEN), generator=gen)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            ids = torch.cat([ids, target(ids).logits[:, -1:].argmax(-1)], dim=1)
    rows = ids.tolist()
    examples = [make_example(r[:PROMPT_LEN], r[PROMPT_LEN:], EOS, 64) for r in rows]
    train_ids, val_ids = split_indices(NUM_SEQS, 0.25)
    return tuple(
        extract_features(target, [examples[i] for i in ids], tokens_per_batch=256)
        for ids in (train_ids, val_ids)
    )


def train(target, features, **kw):
    head = head_for_target(target, seed=0)
    cfg = dict(lr=3e-3, max_steps=50, tokens_per_batch=256, warmup_steps=5, log_every_s=1e9)
    result = train_head(head, *features, TrainConfig(**{**cfg, **kw}))
    return head, result


# ----------------------------------------------------------------------------- data


def test_example_loss_range_and_cut():
    ex = make_example([5, 6, 7], [8, 9], EOS, max_len=100)
    assert ex == Example([5, 6, 7, 8, 9, EOS], 3, True)
    assert ex.loss_range() == (2, 4)  # pairs with input r0, r1; not the one whose input is EOS
    cut = make_example([5, 6, 7], [8, 9], EOS, max_len=5)
    assert cut == Example([5, 6, 7, 8, 9], 3, False) and cut.loss_range() == (2, 4)
    assert make_example([5, 6, 7], [8, 9], EOS, max_len=3) is None  # no response left
    assert make_example([5, 6, 7], [8], EOS, max_len=4).loss_range() == (2, 3)


def test_split_is_deterministic_and_disjoint():
    train_ids, val_ids = split_indices(1000, 0.03)
    assert (train_ids, val_ids) == split_indices(1000, 0.03)
    assert len(val_ids) == 30 and sorted(train_ids + val_ids) == list(range(1000))
    assert val_ids != list(range(30))  # by hash, not a prefix
    assert split_indices(2, 0.03) == ([0], [1]) or split_indices(2, 0.03) == ([1], [0])


def test_batches_respect_the_budget_and_cover_everything():
    import random

    lengths = [random.Random(i).randint(3, 90) for i in range(200)]
    for batches in (
        sorted_batches(lengths, 256),
        shuffled_batches(lengths, 256, random.Random(0)),
    ):
        assert sorted(i for b in batches for i in b) == list(range(200))
        assert all(len(b) * max(lengths[i] for i in b) <= 256 for b in batches)
    assert sorted_batches([300, 5], 256) == [[0], [1]]  # a sequence over budget goes alone


def test_pair_batch_matches_the_docstring(target):
    examples = [Example([3, 4, 5, 6, 7], 3, False), Example([9, 10, 11], 2, False)]
    assert [e.loss_range() for e in examples] == [(2, 4), (1, 2)]
    feats = extract_features(target, examples, tokens_per_batch=4)  # one sequence per batch
    batch = pair_batch(feats, [0, 1])
    assert batch.loss_mask.int().tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    assert batch.loss_rows.tolist() == [2, 3, 5]
    assert batch.next_tokens.tolist() == [[4, 5, 6, 7], [10, 11, 0, 0]]
    # the features of a sequence do not depend on its batch (padding masked, causal)
    with torch.no_grad():
        alone = target.model(torch.tensor([[9, 10, 11]])).last_hidden_state[0]
    torch.testing.assert_close(batch.hidden[1, :2], alone[:2])
    torch.testing.assert_close(batch.target[1, :2], alone[1:])


# ----------------------------------------------------------------------------- objective


def test_chunked_backward_equals_one_backward():
    torch.manual_seed(0)
    lm_head = torch.randn(50, 8)
    g0, target = torch.randn(7, 8), torch.randn(7, 8)
    leaf = g0.clone().requires_grad_(True)
    sums = pair_terms(lm_head, leaf, target, chunk_rows=3, grad_scale=1 / 7)
    ref_g = g0.clone().requires_grad_(True)
    reg = torch.nn.functional.smooth_l1_loss(ref_g, target, reduction="none").mean(-1)
    p = (target @ lm_head.T).softmax(-1)
    ce = -(p * (ref_g @ lm_head.T).log_softmax(-1)).sum(-1)
    (reg + 0.1 * ce).mean().backward()
    torch.testing.assert_close(leaf.grad, ref_g.grad)
    torch.testing.assert_close(sums[0].float() / 7, (reg + 0.1 * ce).mean().detach())
    top1 = ((ref_g @ lm_head.T).argmax(-1) == (target @ lm_head.T).argmax(-1)).sum()
    assert int(sums[3]) == int(top1)
    # a perfect head: top-1 and top-5 all hit, no regression loss
    perfect = pair_terms(lm_head, target, target)
    assert perfect[1] == 0 and perfect[3] == 7 and perfect[4] == 7


def test_lr_schedule_warms_up_and_decays():
    cfg = TrainConfig(lr=1.0, warmup_steps=10)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(0.5)
    assert lr_at(cfg, 99, 1.0) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- training


def test_training_beats_the_untrained_head(target, features):
    _, result = train(target, features)
    assert result.steps == 50 and result.stopped_by == "max_steps"
    assert result.untrained["top1"] < 0.1
    assert result.val["top1"] > result.untrained["top1"] + 0.15
    assert result.val["loss"] < result.untrained["loss"]
    assert result.val["pairs"] == result.untrained["pairs"] > 0


def test_lr_zero_changes_nothing(target, features):
    """Negative control: the same loop with lr 0 leaves the head and its accuracy as they were."""
    head, result = train(target, features, lr=0.0)
    fresh = head_for_target(target, seed=0)
    for name, p in head.trainable().items():
        torch.testing.assert_close(p, fresh.trainable()[name], rtol=0, atol=0)
    assert result.val == result.untrained


def test_epochs_bound_the_run_and_noise_runs(target, features):
    _, result = train(target, features, max_steps=None, epochs=1.5, noise=0.1)
    assert result.stopped_by == "epochs" and result.epochs_done == pytest.approx(1.5, abs=0.2)
    assert result.val["top1"] > result.untrained["top1"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_with_bf16_autocast(target, features):
    """The CUDA path: features in bf16 on the device, fp32 head under bf16 autocast, fused AdamW,
    pinned host-to-device copies."""
    import copy

    from samgpu.eagle.features import Features

    cuda = copy.deepcopy(target).to("cuda", torch.bfloat16)
    moved = tuple(
        Features(f.examples, f.tokens.cuda(), f.hidden.to("cuda", torch.bfloat16), f.seq_offsets)
        for f in features
    )
    head = head_for_target(cuda, seed=0)
    cfg = TrainConfig(lr=3e-3, max_steps=50, tokens_per_batch=256, warmup_steps=5)
    result = train_head(head, *moved, cfg, amp_dtype=torch.bfloat16)
    assert result.val["top1"] > result.untrained["top1"] + 0.15
    assert head.fc.weight.dtype == torch.float32 and head.fc.weight.is_cuda


def test_saved_head_round_trips(target, features, tmp_path):
    head, _ = train(target, features, max_steps=10)
    path = tmp_path / "head.safetensors"
    save_head(
        path,
        head,
        target={"name": "tiny", "vocab_size": 128, "hidden_size": 64},
        provenance={"steps": 10},
    )
    embed = target.get_input_embeddings().weight
    loaded = load_head(path, embed, target.get_output_embeddings().weight)
    assert read_head(path).provenance == {"steps": 10}
    batch = pair_batch(features[1], list(range(len(features[1].examples))))
    with torch.no_grad():
        expected = head.logits(head(batch.next_tokens, batch.hidden))
        got = loaded.logits(loaded(batch.next_tokens, batch.hidden))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- the command


def test_cli_refuses_a_missing_data_file(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl.gz"
    code = cli.main(["eagle", "train", "--out", str(tmp_path / "h"), "--data", str(missing)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("samgpu: error: ") and "nope.jsonl.gz" in err[0]
    assert not (tmp_path / "h").exists()
    assert train_main(["--out", str(tmp_path / "h"), "--data", str(missing)]) == 2


@pytest.mark.parametrize(
    "bad, match",
    [
        (["--minutes", "0"], "minutes"),
        (["--lr", "-1"], "lr"),
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--max-len", "1"], "--max-len"),
        (["--out", "{data}"], "is the --data file"),
        (["--out", "{data}/h"], "is a file, not a folder"),
    ],
    ids=["minutes", "lr", "lr-inf", "max-len", "out-is-data", "out-under-a-file"],
)
def test_cli_refuses_bad_values(tmp_path, capsys, bad, match):
    """Each is one error line before any model loads; the data file is never written over (an
    --out naming it used to be replaced by the head after training)."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "response": "b"}) + "\n")
    before = data.read_bytes()
    bad = [b.format(data=data, tmp=tmp_path) for b in bad]
    argv = ["eagle", "train", "--out", str(tmp_path / "h"), "--data", str(data), *bad]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("samgpu: error: "), err
    assert match in err[0] and data.read_bytes() == before


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eagle", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--minutes", "--epochs", "--max-len", "--tokens-per-batch", "--lr", "--data"):
        assert flag in text
    assert text.count("(default:") + text.count("(none:") >= 14


def test_a_diverged_head_is_not_written(tiny_model_dir, tmp_path, capsys):
    """A learning rate that blows the loss up (here 1e30) ends in one error line and no head file
    (a NaN head used to be saved with status 0 and then loaded by `generate -O head=`)."""
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"Count to {i}.", "response": " ".join(map(str, range(9)))})
            + "\n"
            for i in range(6)
        )
    )
    out = tmp_path / "h.safetensors"
    argv = ["eagle", "train", "--out", str(out), "--data", str(data), "--model",
            str(tiny_model_dir), "--device", "cpu", "--max-steps", "3", "--warmup-steps", "0",
            "--tokens-per-batch", "256", "--val-share", "0.34", "--lr", "1e30"]  # fmt: skip
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "training diverged" in err and not out.exists(), err


def test_command_end_to_end(tiny_model_dir, tmp_path, capsys):
    """A tiny checkpoint with the default tokenizer: the chat template, the file, its .sha256 and
    the JSON line."""
    data = tmp_path / "responses.jsonl.gz"
    records = [
        {
            "source": "s",
            "instruction": f"Count to {i}.",
            "response": " ".join(str(k) for k in range(i + 3)),
        }
        for i in range(8)
    ]
    with gzip.open(data, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    out = tmp_path / "heads" / "tiny.eagle.safetensors"
    argv = [
        "eagle",
        "train",
        "--out",
        str(out),
        "--data",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--tokens-per-batch",
        "512",
        "--val-share",
        "0.25",
    ]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["responses_train"] == 6 and summary["responses_val"] == 2
    assert summary["stopped_by"] == "epochs" and summary["epochs_done"] == pytest.approx(2)
    assert summary["target"]["hidden_size"] == 32 and summary["device"].startswith("cpu")
    assert 0 <= summary["val_top1"] <= 1 and "untrained_val_top1" in summary
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert (out.parent / (out.name + ".sha256")).read_text() == f"{digest}  {out.name}\n"
    assert summary["sha256"] == digest
    meta = read_head(out)
    assert {t.dtype for t in meta.tensors.values()} == {torch.bfloat16}  # --save-dtype default
    assert meta.provenance["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert meta.provenance["command"].startswith("samgpu eagle train --out")
    assert meta.target["vocab_size"] == 49152
    assert "eagle: " in captured.err
