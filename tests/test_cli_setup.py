"""Set-up messages that used to point to the wrong place (issue 14, items 7 and 8): a model folder
without a tokenizer, samgpu's own converted default folder, and a corrupt index."""

import shutil

import pytest

from samgpu import cli
from tests.api import fixtures

tiny_model_dir = fixtures.tiny_model_dir


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr()


def error_line(err):
    lines = [x for x in err.splitlines() if x.startswith("samgpu: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def prompt_args(model):
    return ["generate", "--model", model, "--method", "ar", "--device", "cpu", "--no-progress",
            "--max-new-tokens", "3", "--raw", "--prompt", "Hi"]  # fmt: skip


@pytest.fixture
def converted_layout(tmp_path, tiny_model_dir):
    """The layout of samgpu's converted default ($SAMGPU_CACHE/<name>/{model,tokenizer}/)."""
    root = tmp_path / "SmolLM2-converted"
    (root / "model").mkdir(parents=True)
    for f in tiny_model_dir.iterdir():
        tok_file = f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab"))
        dest = root / ("tokenizer" if tok_file else "model")
        dest.mkdir(exist_ok=True)
        shutil.copy(f, dest / f.name)
        (dest / "COMPLETE").write_text("{}")
    return root


@pytest.mark.parametrize("sub", ["", "model"], ids=["cache-folder", "its-model-folder"])
def test_the_converted_default_folder_is_a_model(capsys, converted_layout, sub):
    """--model <the converted default's folder> (or its model/ folder): accepted as it is (it
    used to end with a cut-off "Couldn't instantiate the backend tokenizer from one of:")."""
    code, out = run(capsys, *prompt_args(converted_layout / sub))
    assert code == 0, out.err
    assert out.out.strip()


def test_a_folder_without_tokenizer_or_config_says_what_a_model_folder_holds(
    capsys, tmp_path, tiny_model_dir
):
    no_tok = tmp_path / "weights-only"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(tiny_model_dir / name, no_tok / name)
    code, out = run(capsys, *prompt_args(no_tok))
    line = error_line(out.err)
    assert code == 2 and "has no tokenizer files" in line and "tokenizer.json" in line

    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = run(capsys, *prompt_args(empty))
    line = error_line(out.err)
    assert code == 2 and "no config.json" in line and "save_pretrained" in line


def test_corrupt_index_is_reported_once_with_one_fix(capsys, tmp_path, tiny_model_dir):
    """The message names the file and one way out, which does not write over the user's file
    (it said "rebuild" twice, the second time with --out onto the same path)."""
    import numpy as np

    from samgpu.sam import SamIndex

    idx = SamIndex.build([np.array([5, 6, 7], dtype=np.int32)], vocab_size=100, eos_id=2)
    good = idx.save(tmp_path / "good.samidx")
    bad = tmp_path / "mine.samidx"
    bad.write_bytes(good.read_bytes()[:100])
    argv = prompt_args(tiny_model_dir)
    argv[argv.index("ar")] = "sam+tr"
    code, out = run(capsys, *argv, "--index", bad)
    line = error_line(out.err)
    assert code == 2 and "corrupt" in line and str(bad) in line
    assert line.lower().count("rebuild") + line.count("build a new one") == 1, line
    assert f"--out {bad}" not in line
