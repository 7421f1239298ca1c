"""A tiny duck-typed tokenizer for the index tests: whitespace words hashed into a fixed vocabulary
(Hugging Face-like: get_vocab, __len__, eos_token_id, all_special_tokens, batch __call__)."""

from __future__ import annotations

import zlib


class WordTokenizer:
    def __init__(self, vocab_size: int = 4096, eos_token_id: int = 2):
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.all_special_tokens = ["<eos>"]
        self.extra_vocab: dict[str, int] = {}

    def get_vocab(self) -> dict[str, int]:
        vocab = {f"w{i}": i for i in range(self.vocab_size)}
        vocab["<eos>"] = self.eos_token_id
        vocab.pop(f"w{self.eos_token_id}")
        return {**vocab, **self.extra_vocab}

    def __len__(self) -> int:
        return self.vocab_size

    def _ids(self, text: str) -> list[int]:
        return [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in text.split()]

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        assert add_special_tokens is False, "the index must not add special tokens"
        return {"input_ids": [self._ids(t) for t in texts]}
