"""Host-side suffix-automaton index (DESIGN.md §3): numba build, SamIndex, one-file storage, corpus
reading, the embedded default index. Knows nothing of models or GPUs (tests/test_layering.py).

    from samgpu.sam import SamIndex, build_default_index
    index = SamIndex.build(docs, vocab_size=V, eos_id=eos)   # docs: iterable of token arrays
    index.save("x.samidx"); index = SamIndex.load("x.samidx")  # mmap, validated on every load
    path = build_default_index(tokenizer)                      # cached under $SAMGPU_CACHE
"""

from samgpu.sam.corpus import (
    DEFAULT_FIELDS,
    hf_encode_batch,
    read_texts,
    token_docs,
    tokenizer_fingerprint,
    tokenizer_vocab_size,
)
from samgpu.sam.default import (
    build_default_index,
    build_index_from_files,
    cache_dir,
    default_corpus_paths,
    default_index_path,
    ensure_default_index,
    load_default_index,
)
from samgpu.sam.index import ARRAY_NAMES, NO_POSITION, NO_STATE, SamIndex
from samgpu.sam.storage import FORMAT_VERSION, MAGIC, read_header

__all__ = [
    "ARRAY_NAMES",
    "DEFAULT_FIELDS",
    "FORMAT_VERSION",
    "MAGIC",
    "NO_POSITION",
    "NO_STATE",
    "SamIndex",
    "build_default_index",
    "build_index_from_files",
    "cache_dir",
    "default_corpus_paths",
    "default_index_path",
    "ensure_default_index",
    "hf_encode_batch",
    "load_default_index",
    "read_header",
    "read_texts",
    "token_docs",
    "tokenizer_fingerprint",
    "tokenizer_vocab_size",
]
