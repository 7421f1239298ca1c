"""`samgpu generate --input ... --output ...`: a JSONL file, resumable, in one process or one per
GPU under torchrun (argument checks and the model session: samgpu/cli/generate.py).

Flow: read and check every input line (samgpu.io) -> join the torchrun group, if any
(samgpu.distributed) -> rank 0 opens the output, resuming `<output>.partial`, and tells every rank
which records are done -> each rank loads the model and index, tokenizes its round-robin shard,
skips (or, with --strict, rejects) empty and over-long prompts, and allocates its buffers (out of
memory here is an error naming a batch size) -> one process: every pending prompt goes through the
scheduler in one call, and each record is appended to the partial file as its request finishes;
under torchrun: rounds (one batch per rank, or ROUND_BATCHES batches' worth with
--continuous-batching) gathered on rank 0, which appends them -> rank 0 writes the final file in
input order and renames it into place.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from samgpu.cli.generate import Session, oom_error, profiler, run_device
from samgpu.cli.output import error, warn
from samgpu.errors import UserError


def _settings(args: argparse.Namespace, input_fp: str, num_records: int) -> dict[str, Any]:
    """What decides the output text: a partial file from other settings is not resumed."""
    return {
        "input_sha256": input_fp,
        "num_records": num_records,
        "field": args.field,
        "raw": args.raw,
        "model": args.model,
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "stop": list(args.stop),
        "output_field": args.output_field,
        "exact": args.exact,
    }


class Progress:
    """tqdm bar over records with live tokens/s and mean accepted tokens per step (rank 0)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="req", dynamic_ncols=True, file=sys.stderr)
        self.t0 = time.perf_counter()
        self.tokens = 0  # tokens of finished rounds
        self.steps = 0.0  # decode steps of finished rounds, summed over requests
        self.call_tokens = 0  # the running round so far (finished and live requests)
        self.call_steps = 0.0

    def on_step(self, info: Any) -> None:
        """ProgressInfo of the running generate call."""
        self.call_tokens = info.done_tokens + sum(info.num_generated)
        self.call_steps = float(info.done_steps + sum(info.num_steps))
        self._postfix()

    def records_done(self, num_records: int) -> None:
        if self.bar is not None and num_records:
            self.bar.update(num_records)

    def round_done(self, tokens: int, steps: float) -> None:
        self.tokens += tokens
        self.steps += steps
        self.call_tokens, self.call_steps = 0, 0.0
        self._postfix()

    def _postfix(self) -> None:
        if self.bar is None:
            return
        tokens = self.tokens + self.call_tokens
        steps = self.steps + self.call_steps
        rate = tokens / max(time.perf_counter() - self.t0, 1e-9)
        post = f"{rate:.3g} tok/s"
        if steps:
            post += f", MAT {tokens / steps:.2f}"
        self.bar.set_postfix_str(post, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# torchrun with --continuous-batching: batches' worth of prompts per round (gathered after it)
ROUND_BATCHES = 8


def generate_file(args: argparse.Namespace) -> int:
    import torch

    from samgpu import distributed as dist
    from samgpu.io import OutputWriter, fingerprint_file, read_records

    records = read_records(args.input, field=args.field)
    if args.limit is not None:
        records = records[: args.limit]
    device = run_device(args)
    info = dist.init(device.type)
    device = run_device(args, info)
    rank_suffix = f"-rank{info.rank}" if info.is_distributed else ""

    # rank 0 opens (and maybe resumes) the output; every rank learns which records are done
    writer, status = None, {"error": None, "exit": 0, "done": []}
    if info.is_main:
        try:
            settings = _settings(args, fingerprint_file(args.input), len(records))
            writer = OutputWriter.open(args.output, settings, overwrite=args.overwrite)
            status["done"] = sorted(writer.done)
        except UserError as e:
            status = {"error": str(e), "exit": e.exit_code, "done": []}
    status = dist.broadcast(status, info)
    if status["error"] is not None:
        if info.is_main:
            (warn if status["exit"] == 0 else error)(status["error"])
        dist.shutdown()
        return status["exit"]
    done = set(status["done"])
    pending = [r for r in records if r.index not in done]
    if not pending:
        if writer is not None:
            writer.finalize(len(records))
            print(f"samgpu: {args.output} complete ({len(records)} records)", file=sys.stderr)
        dist.shutdown()
        return 0
    if done and info.is_main:
        print(
            f"samgpu: resuming {args.output}: {len(done)} of {len(records)} records already done",
            file=sys.stderr,
        )

    mine = dist.shard(pending, info)
    setup_error: UserError | None = None
    session = None
    try:
        session = Session(args, device, num_reqs=args.batch_size, max_len=args.max_new_tokens)
        work, skipped = _prepare(session, mine, args)
        longest = max((len(ids) for _, ids in work), default=1)
        session.warm_up(min(args.batch_size, max(len(work), 1)), longest)
    except UserError as e:
        setup_error = e
    if not dist.all_ok(setup_error is None, info):
        if setup_error is not None:
            error(str(setup_error))
        if writer is not None:
            writer.close()
        dist.shutdown()
        return setup_error.exit_code if setup_error is not None else 1

    progress = Progress(len(pending), enabled=info.is_main and not args.no_progress)
    # One process: a single round of everything, each record written as it finishes. torchrun:
    # rounds of one batch per rank (continuous batching: ROUND_BATCHES batches' worth), gathered
    # and written by rank 0 after each round.
    if info.is_distributed:
        round_size = args.batch_size * (ROUND_BATCHES if args.continuous_batching else 1)
    else:
        round_size = max(len(work), 1)
    rounds = dist.num_rounds(len(pending), round_size, info)
    rank_busy = [0.0] * info.world_size  # seconds each rank spent generating (rank 0 sums them)
    timing = RunTotals()  # this rank's prefill / decode / host seconds and drafting steps
    try:
        with profiler(args, rank_suffix):
            for t in range(rounds):
                results = list(skipped) if t == 0 else []
                batch = work[t * round_size : (t + 1) * round_size]
                tokens = steps = busy = 0.0
                failure: BaseException | None = None
                if batch:
                    t_batch = time.perf_counter()

                    def finished(i: int, toks: list[int], st, batch=batch, results=results):
                        rec = batch[i][0]
                        record = _output_record(session, rec, list(toks), vars(st))
                        if writer is not None and not info.is_distributed:
                            # written as it finishes (survives a kill; fsynced per round)
                            writer.add(rec.index, record)
                            progress.records_done(1)
                        else:
                            results.append((rec.index, record))

                    try:
                        out = session.generate(
                            [ids for _, ids in batch],
                            on_progress=progress.on_step,
                            on_finish=finished,
                        )
                        tokens = sum(len(t) for t in out.tokens)
                        steps = sum(float(st.steps) for st in out.stats)
                        timing.add(out.run)
                    except torch.OutOfMemoryError as e:
                        failure, results = oom_error(e, args), []
                    except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks learn of it
                        failure, results = e, []
                    busy = time.perf_counter() - t_batch
                # The healthy ranks' records of this round are saved, then every rank stops if
                # one failed (a rank leaving alone would hang the gather, or get the others killed
                # by torchrun with their records unsaved).
                gathered = dist.gather((results, tokens, steps, busy), info)
                if writer is not None:
                    for r, (part, part_tokens, part_steps, part_busy) in enumerate(gathered):
                        writer.add_many(part)
                        progress.records_done(len(part))
                        progress.round_done(int(part_tokens), part_steps)
                        rank_busy[r] += part_busy
                if not dist.all_ok(failure is None, info):
                    raise failure or UserError(
                        "stopped because another process failed (its error is above); finished"
                        " records are kept and the same command resumes",
                        exit_code=1,
                    )
        if writer is not None:
            writer.finalize(len(records))
    except BaseException:
        dist.shutdown()
        raise
    finally:
        progress.close()
        if writer is not None:
            writer.close()
    if info.is_main:
        n_tok = progress.tokens
        secs = time.perf_counter() - progress.t0
        if args.stats_json:
            totals = (len(records), len(pending), n_tok, progress.steps, secs, rank_busy, rounds)
            _write_stats(args, info, session, timing, *totals)
        print(
            f"samgpu: wrote {args.output} ({len(records)} records; {n_tok} new tokens in"
            f" {secs:.1f} s, {n_tok / max(secs, 1e-9):.1f} tokens/s"
            + (
                f", mean accepted tokens per step {n_tok / progress.steps:.2f}"
                if progress.steps
                else ""
            )
            + ")",
            file=sys.stderr,
        )
    dist.shutdown()
    return 0


class RunTotals:
    """The scheduler's RunStats summed over a rank's generate calls (--stats-json "timing")."""

    def __init__(self):
        self.prefill_s = self.steps_s = self.host_s = 0.0
        self.steps = self.drafting_steps = 0

    def add(self, run) -> None:
        self.prefill_s += run.prefill_s
        self.steps_s += run.steps_s
        self.host_s += run.host_s
        self.steps += run.steps
        self.drafting_steps += run.drafting_steps


def _write_stats(
    args, info, session, timing, num_records, num_new, tokens, steps, seconds, rank_busy, rounds
) -> None:
    """--stats-json: the totals; generation time counts from after warm-up to the last write.
    rank_generate_seconds: time each rank spent inside generate; the rest of a rank's share of
    generate_seconds is waiting for the other ranks (each round ends with a gather) and writing.
    timing (rank 0's own): seconds in prefills, in decode windows and on the host, loop steps and
    how many drafted (the others were plain AR steps of adaptive speculation)."""
    import torch

    stats = {
        "records": num_records,
        "new_records": num_new,
        "new_tokens": int(tokens),
        "generate_seconds": round(seconds, 4),
        "tokens_per_second": round(tokens / max(seconds, 1e-9), 2),
        "mean_accepted_tokens": round(tokens / steps, 4) if steps else None,
        "load_seconds": round(session.load_seconds, 3),
        "world_size": info.world_size,
        "rounds": rounds,
        "rank_generate_seconds": [round(b, 4) for b in rank_busy],
        "timing": {
            "prefill_s": round(timing.prefill_s, 4),
            "steps_s": round(timing.steps_s, 4),
            "host_s": round(timing.host_s, 4),
        },
        "steps": timing.steps,
        "drafting_steps": timing.drafting_steps,
        "batch_size": args.batch_size,
        "method": args.method,
        "max_new_tokens": args.max_new_tokens,
        "device": torch.cuda.get_device_name() if session.device.type == "cuda" else "cpu",
    }
    path = Path(args.stats_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats, indent=1) + "\n")


def _prepare(session: Session, records, args):
    """Tokenize; split into (record, ids) to generate and finished 'skipped' output records."""
    work, skipped = [], []
    for rec in records:
        problem = "empty prompt" if rec.is_empty else None
        ids: list[int] = []
        if problem is None:
            ids = session.encode(rec.prompt, rec.messages)
            problem = session.too_long(ids)
        if problem is None:
            work.append((rec, ids))
            continue
        where = f"{args.input}:{rec.line}"
        if args.strict:
            raise UserError(f"{where}: {problem} (--strict)")
        warn(f"{where}: {problem}; skipped (its output record has an 'error' field)")
        out = dict(rec.data)
        out.update({args.output_field: None, "finish_reason": "skipped", "error": problem})
        skipped.append((rec.index, out))
    return work, skipped


def _output_record(session: Session, rec, tokens: list[int], stats: dict) -> dict[str, Any]:
    from samgpu.api import make_completion

    done = make_completion(tokens, stats, session.tokenizer, session.eos, session.args.stop)
    out = dict(rec.data)
    out[session.args.output_field] = done.text
    out["finish_reason"] = done.finish_reason
    out["num_tokens"] = len(done.tokens)
    out["stats"] = _jsonable(done.stats)
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
