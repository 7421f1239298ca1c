"""Static-index build benchmark (CPU, one core: the numba build is single-threaded).

    python -m profiling.bench_index_build [--datastore DIR] [--synthetic-tokens 10000000] [--rep 3]
        [--validate] [--index FILE ...]

Measures, per corpus, the build time (p50/p20/p80 over --rep builds, compile excluded by a warm-up
build) and the index size:
- (a) each datastore corpus (../shared/data/datastore_corpus: GSM8K, GPTeacher x2, code_alpaca,
  AlpacaEval outputs) tokenized with the default SmolLM2 tokenizer, and all five together
  (tokenization timed separately, not part of the build rate);
- (b) a synthetic corpus of >= 10 M tokens with realistic repetition: Zipf(1.1) unigrams over a
  49,152-id vocabulary, mixed with phrases (5-40 tokens) drawn Zipf-distributed from a pool, so
  long repeats and many clones occur as in chat/code corpora.

Metrics (text = documents + EOS separators + the vocabulary singletons, T tokens; corpus tokens =
documents + EOS only):
- tok_s: text tokens per second of build (read corpus arrays -> finished SamIndex, flattening and
  counts included); corpus_tok_s: corpus tokens per second;
- B/tok: bytes of all saved arrays per text token; B/tok no root: without the dense root_next row;
  B/corpus tok: all arrays per corpus token (the singletons' overhead shows on small corpora);
- file B/tok: the saved file per text token (token arrays as uint16 when the vocabulary fits);
- GPU B/tok: bytes per text token of the index as the chain drafters hold it on the GPU
  (samgpu.automata.StaticAutomaton: no `count`, uint16 edge labels when the vocabulary fits);
- states/tok, edges/tok; save and mmap-load times of the index file;
- with --validate (and for every --index FILE): the structural validation every load runs
  (SamIndex.validate(deep=False)) and the deep level, against reading the file: `load` (mmap,
  checksums, validation) page-cache hot and cold (the file's pages dropped with
  posix_fadvise(DONTNEED) first), `read` = load minus validation, and validation / hot read.
Targets (DESIGN.md §8 and the index brief): build >= 1 M tokens/s per core; <= 48 bytes per
token for the flattened arrays; <= 40 GPU bytes per corpus token.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from samgpu.automata import StaticAutomaton
from samgpu.sam import SamIndex, hf_encode_batch, read_texts

try:
    from profiling.common import bench_cpu, env, hardware_line, print_table, write_jsonl
except ImportError:  # run as `python profiling/bench_index_build.py`
    from common import bench_cpu, env, hardware_line, print_table, write_jsonl

DATASTORE_FILES = (
    "gsm8k_train.jsonl",
    "gpteacher_codegen-instruct.json",
    "gpteacher_roleplay-simple-deduped-roleplay-instruct.json",
    "code_alpaca_2k.json",
    "alpaca_eval_vicuna-7b-v1.3_model_outputs.json",
)
DEFAULT_DATASTORE = Path(__file__).resolve().parents[2] / "shared" / "data" / "datastore_corpus"


def synthetic_corpus(
    num_tokens: int, vocab_size: int = 49152, eos_id: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Flat tokens + doc_offsets: ~300-token documents of Zipf unigrams and repeated phrases."""
    rng = np.random.default_rng(seed)

    def zipf_ids(n: int) -> np.ndarray:
        ids = rng.zipf(1.1, size=n) - 1
        ids = ids[ids < vocab_size - 3] + 3  # keep ids 0..2 for specials
        while ids.size < n:
            more = rng.zipf(1.1, size=n) - 1
            ids = np.concatenate([ids, more[more < vocab_size - 3] + 3])
        return ids[:n].astype(np.int32)

    pool = [zipf_ids(int(rng.integers(5, 41))) for _ in range(20000)]
    pieces, total = [], 0
    while total < num_tokens:
        if rng.random() < 0.5:
            k = int(rng.zipf(1.2)) - 1
            piece = pool[k % len(pool)]
        else:
            piece = zipf_ids(int(rng.integers(1, 21)))
        pieces.append(piece)
        total += piece.size
    tokens = np.concatenate(pieces)[:num_tokens]
    tokens[tokens == eos_id] = eos_id + 1
    doc_lens = rng.integers(100, 500, size=num_tokens // 100 + 1)
    offsets = np.concatenate([[0], np.cumsum(doc_lens)])
    offsets = offsets[offsets < num_tokens]
    return tokens, np.concatenate([offsets, [num_tokens]])


def _size(docs: list[np.ndarray]) -> int:
    """The size hint a caller that knows its corpus passes (the CLI estimates it from bytes)."""
    return sum(d.size for d in docs) + len(docs)


def _drop_page_cache(path: Path) -> None:
    """Evict the file's pages (no root needed; only pages nobody maps are dropped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def validation_timings(path: Path, rep: int = 5) -> dict:
    """Seconds to load `path` (validation included) cold and hot, and of the validation alone
    (fast level, as every load runs it; deep level, on request): p50 over `rep`."""
    SamIndex.load(path).validate(deep=True)  # numba cache load / compile excluded

    def load_cold():
        gc.collect()  # the previous map must be gone for its pages to drop
        _drop_page_cache(path)
        start = time.perf_counter()
        SamIndex.load(path)
        return time.perf_counter() - start

    cold = float(np.median([load_cold() for _ in range(max(1, rep // 2))]))
    hot = bench_cpu(lambda: SamIndex.load(path), rep=rep)["p50"] / 1e3
    index = SamIndex.load(path)
    fast = bench_cpu(lambda: index.validate(deep=False), rep=rep)["p50"] / 1e3
    deep = bench_cpu(lambda: index.validate(deep=True), rep=rep)["p50"] / 1e3
    return {
        "file_bytes": path.stat().st_size,
        "load_cold_s": cold,
        "load_hot_s": hot,
        "validate_s": fast,
        "validate_deep_s": deep,
        "read_hot_s": hot - fast,
        "validate_over_hot_read": fast / max(hot - fast, 1e-9),
        "validate_over_cold_read": fast / max(cold - fast, 1e-9),
    }


def index_file_record(path: Path, rep: int) -> dict:
    index = SamIndex.load(path)
    stats = index.stats()
    del index
    t = validation_timings(path, rep)
    return {
        "bench": "index_validate",
        "provider": "numba",
        "params": {"corpus": path.name, "vocab_size": stats["vocab_size"]},
        "metric": "validate_time",
        "unit": "s",
        "p50": t["validate_s"],
        "text_tokens": stats["tokens"],
        "states": stats["states"],
        "edges": stats["edges"],
        "load_avg_1m": os.getloadavg()[0],
        **t,
    }


def measure(name: str, build, rep: int, params: dict, validate: bool = False) -> dict:
    index = build()  # warm-up: numba compile/cache load excluded
    cpu_start = time.process_time()
    t = bench_cpu(build, rep=rep, warmup=0)
    # Process CPU time per build: robust to other processes sharing the cores (wall time is not).
    cpu_ms = (time.process_time() - cpu_start) * 1e3 / rep
    stats = index.stats()
    seconds = t["p50"] / 1e3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.samidx"
        start = time.perf_counter()
        index.save(path)
        save_s = time.perf_counter() - start
        file_bytes = path.stat().st_size
        start = time.perf_counter()
        loaded = SamIndex.load(path, mmap=True, verify=True)
        load_s = time.perf_counter() - start
        assert loaded.num_states == index.num_states
        del loaded
        timings = validation_timings(path) if validate else {}
    corpus_tokens = index.extra["corpus_tokens"]
    gpu_bytes = StaticAutomaton.from_index(index, "cpu", with_count=False).nbytes
    return {
        "bench": "index_build",
        "provider": "numba",
        "params": {"corpus": name, **params},
        "metric": "build_time",
        "unit": "ms",
        **t,
        "tok_s": stats["tokens"] / seconds,
        "corpus_tok_s": corpus_tokens / seconds,
        "text_tokens": stats["tokens"],
        "corpus_tokens": corpus_tokens,
        "states": stats["states"],
        "edges": stats["edges"],
        "bytes": stats["bytes"],
        "bytes_per_token": stats["bytes"] / stats["tokens"],
        "bytes_per_token_no_root": stats["bytes_no_root"] / stats["tokens"],
        "bytes_per_corpus_token": stats["bytes"] / corpus_tokens,
        "gpu_bytes_per_token": gpu_bytes / stats["tokens"],
        "file_bytes": file_bytes,
        "file_bytes_per_token": file_bytes / stats["tokens"],
        "states_per_token": stats["states"] / stats["tokens"],
        "edges_per_token": stats["edges"] / stats["tokens"],
        "states_degree_1_frac": stats["states_degree_1"] / stats["states"],
        "cpu_ms": cpu_ms,
        "array_bytes": stats["array_bytes"],
        # Other jobs on the host inflate wall times; cpu_ms and the load average say by how much.
        "load_avg_1m": os.getloadavg()[0],
        "save_s": save_s,
        "load_mmap_verify_s": load_s,
        **timings,
    }


def datastore_records(folder: Path, rep: int, validate: bool = False) -> list[dict]:
    from samgpu.models import load_default_tokenizer  # profiling may use the runtime

    tokenizer = load_default_tokenizer()
    encode = hf_encode_batch(tokenizer)
    vocab_size, eos_id = len(tokenizer), int(tokenizer.eos_token_id)
    records, all_docs = [], []
    for name in DATASTORE_FILES:
        path = folder / name
        if not path.is_file():
            print(f"skipping {path}: not found")
            continue
        start = time.perf_counter()
        texts = list(read_texts([path]))
        docs = []
        for lo in range(0, len(texts), 512):
            docs += [np.asarray(ids, dtype=np.int32) for ids in encode(texts[lo : lo + 512])]
        tok_s = time.perf_counter() - start
        all_docs += docs
        params = {"vocab_size": vocab_size, "docs": len(docs), "tokenize_s": round(tok_s, 3)}
        records.append(
            measure(
                name,
                lambda docs=docs: SamIndex.build(
                    docs, vocab_size=vocab_size, eos_id=eos_id, expected_tokens=_size(docs)
                ),
                rep,
                params,
                validate,
            )
        )
    if all_docs:
        params = {"vocab_size": vocab_size, "docs": len(all_docs)}
        records.append(
            measure(
                "datastore (all five)",
                lambda: SamIndex.build(
                    all_docs, vocab_size=vocab_size, eos_id=eos_id, expected_tokens=_size(all_docs)
                ),
                rep,
                params,
                validate,
            )
        )
    return records


def synthetic_records(num_tokens: int, rep: int, validate: bool = False) -> list[dict]:
    tokens, offsets = synthetic_corpus(num_tokens)
    params = {"vocab_size": 49152, "docs": int(offsets.size - 1), "zipf": 1.1}
    name = f"synthetic {num_tokens / 1e6:g}M"
    flat = measure(
        f"{name} (from_text_arrays)",
        lambda: SamIndex.from_text_arrays(tokens, offsets, vocab_size=49152, eos_id=2),
        rep,
        params,
        validate,
    )
    docs = [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    streamed = measure(
        f"{name} (streamed docs)",
        lambda: SamIndex.build(docs, vocab_size=49152, eos_id=2, expected_tokens=_size(docs)),
        1,
        params,
    )
    return [flat, streamed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datastore", type=Path, default=DEFAULT_DATASTORE)
    parser.add_argument("--synthetic-tokens", type=int, default=10_000_000)
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSONL (default: results/...)")
    parser.add_argument(
        "--validate", action="store_true", help="also time the load-time structural validation"
    )
    parser.add_argument(
        "--index",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="time loading and validating these index files (e.g. the cached default index)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    records = []
    if args.datastore and args.datastore.is_dir():
        records += datastore_records(args.datastore, args.rep, args.validate)
    else:
        print(f"no datastore folder at {args.datastore}: skipping (a)")
    if args.synthetic_tokens > 0:
        records += synthetic_records(args.synthetic_tokens, max(1, args.rep - 1), args.validate)
    files = [index_file_record(path, max(args.rep, 5)) for path in args.index]
    rows = [
        {
            "corpus": r["params"]["corpus"],
            "corpus tok": r["corpus_tokens"],
            "text tok": r["text_tokens"],
            "build s": r["p50"] / 1e3,
            "M tok/s": r["tok_s"] / 1e6,
            "M corpus tok/s": r["corpus_tok_s"] / 1e6,
            "M tok/cpu-s": r["text_tokens"] / r["cpu_ms"] / 1e3,
            "B/tok": r["bytes_per_token"],
            "B/tok no root": r["bytes_per_token_no_root"],
            "B/corpus tok": r["bytes_per_corpus_token"],
            "file B/tok": r.get("file_bytes_per_token"),
            "GPU B/tok": r.get("gpu_bytes_per_token"),
            "states/tok": r["states_per_token"],
            "edges/tok": r["edges_per_token"],
            "deg-1 states": r["states_degree_1_frac"],
            "save s": r["save_s"],
            "load s": r["load_mmap_verify_s"],
            "host load": r["load_avg_1m"],
        }
        for r in records
    ]
    if rows:
        print()
        print_table(rows, list(rows[0]), title="SAM index build (one core)")
    checked = [r for r in records + files if "validate_s" in r]
    if checked:
        vrows = [
            {
                "index": r["params"]["corpus"],
                "text tok": r["text_tokens"],
                "file MB": r["file_bytes"] / 1e6,
                "load cold s": r["load_cold_s"],
                "load hot s": r["load_hot_s"],
                "validate s": r["validate_s"],
                "deep s": r["validate_deep_s"],
                "validate / hot read": r["validate_over_hot_read"],
                "validate / cold read": r["validate_over_cold_read"],
                "host load": r["load_avg_1m"],
            }
            for r in checked
        ]
        print()
        print_table(vrows, list(vrows[0]), title="Load-time validation (one core)")
    print(hardware_line(env()))
    path = write_jsonl(records + files, args.out)
    print(f"wrote {len(records) + len(files)} records to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
