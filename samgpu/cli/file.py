"""`samgpu generate --input ... --output ...`: a JSONL file, resumable, in one process or one per
GPU under torchrun (argument checks, the Plan and the model Session: samgpu/cli/generate.py).

Flow: argument and path checks (the output is never the input; folders writable) -> read and check
every input line (samgpu.inputs) -> join the torchrun group, if any (samgpu.distributed) -> an
existing final output is either done (its fingerprint matches this input and these settings:
exit 0) or refused (exit 2, naming what changed) -> the Plan, before any output file exists: drafter
options, tokenizer, context length, static index, every prompt tokenized; empty and over-long
prompts are skipped (or, with --strict, rejected), and a file in which nothing can run is an error
-> rank 0 opens the output, resuming `<output>.partial`, and tells every rank which records are
done -> each rank loads the model and allocates its buffers (out of memory here is an error naming
a batch size; a failed set-up removes a partial file that holds no record) -> one process: every
pending prompt goes through the scheduler in one call, and each record is appended to the partial
file as its request finishes; under torchrun: rounds (one batch per rank, or ROUND_BATCHES
batches' worth with --continuous-batching) gathered on rank 0, which appends them -> rank 0 writes
the final file in input order with its fingerprint (samgpu.io).

Exit status: 0; EXIT_SKIPPED (3) when the output is complete but some records were skipped (0 with
--allow-skips); 2 for what the user can fix; 1 for the environment; 130 / 143 when interrupted.

Per-record `stats`: steps, generated, mat, tokens_per_s, accepted_hist, sources (the request's
own); `decode_s`, from its admission to the check that collected it (its wall time in the batch),
`queued_s` and `finish_s` (since the call started); `batch_prefill_s`, the prefill call that
admitted it, shared with every request admitted in that call (not a per-request cost).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from samgpu.cli.generate import Plan, Session, chain, oom_error, profiler, run_device
from samgpu.cli.output import error, warn
from samgpu.cli.progress import Progress, RunTotals, write_stats
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


# torchrun with --continuous-batching: batches' worth of prompts per round (gathered after it)
ROUND_BATCHES = 8


def generate_file(args: argparse.Namespace) -> int:
    import torch

    from samgpu import distributed as dist
    from samgpu.io import OutputWriter, check_final, fingerprint_file, read_records

    records = read_records(args.input, field=args.field)
    if args.limit is not None:
        records = records[: args.limit]
    _check_output_field_is_new(records, args)
    device = run_device(args)
    info = dist.init(device.type)
    device = run_device(args, info)
    rank_suffix = f"-rank{info.rank}" if info.is_distributed else ""
    settings = _settings(args, fingerprint_file(args.input), len(records))

    # 1. an existing final output is done (same input and settings) or refused; nothing is created
    status = _on_main(info, lambda: None if args.overwrite else check_final(args.output, settings))
    if status["error"] is not None:
        return _stop(args, info, status)

    # 2. everything that can be checked before any output file exists: options, tokenizer,
    # context, index, every prompt (--strict, all skipped); the weights load later
    setup_error: UserError | None = None
    try:
        plan = Plan(args, device)
        work, skipped = _prepare(plan, records, args)
    except UserError as e:
        setup_error = e
    if not dist.all_ok(setup_error is None, info):
        return _failed_setup(setup_error, info, None)
    if info.is_main:
        _warn_skipped(skipped, args)

    # 3. rank 0 locks the output and opens (or resumes) the partial; every rank learns what is done
    writer = None

    def open_output():
        nonlocal writer
        writer = OutputWriter.open(args.output, settings, overwrite=args.overwrite)
        return sorted(writer.done)

    status = _on_main(info, open_output)
    if status["error"] is not None:
        return _stop(args, info, status)
    done = set(status["done"])
    pending = [(rec, ids) for rec, ids in work if rec.index not in done]
    summary = {"num_skipped": len(skipped)}
    new_skipped = [(i, r) for i, r, _ in skipped if i not in done]
    if not pending:
        if writer is not None:
            writer.add_many(new_skipped)
            writer.finalize(len(records), summary)
            print(
                f"samgpu: {args.output} complete ({_counts(summary, len(records))})",
                file=sys.stderr,
            )
            _no_stats(args)
        dist.shutdown()
        return _exit_status(summary, args)
    if done and info.is_main:
        print(
            f"samgpu: resuming {args.output}: {len(done)} of {len(records)} records already done",
            file=sys.stderr,
        )

    # 4. load the model and allocate (out of memory here names a batch size)
    mine = dist.shard(pending, info)
    session = None
    try:
        session = Session(plan, num_reqs=args.batch_size, max_len=args.max_new_tokens)
        longest = max((len(ids) for _, ids in mine), default=1)
        session.warm_up(min(args.batch_size, max(len(mine), 1)), longest)
    except UserError as e:
        setup_error = e
    if not dist.all_ok(setup_error is None, info):
        return _failed_setup(setup_error, info, writer)
    if writer is not None:
        writer.add_many(new_skipped)  # after the set-up: a failed one leaves no partial file

    progress = Progress(len(pending), enabled=info.is_main and not args.no_progress)
    # One process: a single round of everything, each record written as it finishes. torchrun:
    # rounds of one batch per rank (continuous batching: ROUND_BATCHES batches' worth), gathered
    # and written by rank 0 after each round.
    if info.is_distributed:
        round_size = args.batch_size * (ROUND_BATCHES if args.continuous_batching else 1)
    else:
        round_size = max(len(mine), 1)
    rounds = dist.num_rounds(len(pending), round_size, info)
    rank_busy = [0.0] * info.world_size  # seconds each rank spent generating (rank 0 sums them)
    timing = RunTotals()  # this rank's prefill / decode / host seconds and drafting steps
    try:
        with profiler(args, rank_suffix) as prof:
            for t in range(rounds):
                results = []
                batch = mine[t * round_size : (t + 1) * round_size]
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
                            on_progress=chain(progress.on_step, prof.step),
                            on_finish=finished,
                            keys=[rec.index for rec, _ in batch],  # samples per record
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
            writer.finalize(len(records), summary)
    except BaseException:
        dist.shutdown(together=False)
        raise
    finally:
        progress.close()
        if writer is not None:
            writer.close()
        if session is not None and info.is_main:
            session.save_store()  # also after an interrupt: the next run resumes with it
    if info.is_main:
        n_tok = progress.tokens
        secs = time.perf_counter() - progress.t0
        if args.stats_json:
            totals = (len(records), len(pending), n_tok, progress.steps, secs, rank_busy, rounds)
            write_stats(args, info, session, timing, *totals, num_skipped=len(skipped))
        mat = (
            f", mean accepted tokens per step {n_tok / progress.steps:.2f}"
            if progress.steps
            else ""
        )
        print(
            f"samgpu: wrote {args.output} ({_counts(summary, len(records))}; {n_tok} new tokens"
            f" in {secs:.1f} s, {n_tok / max(secs, 1e-9):.1f} tokens/s{mat}; method {args.method})",
            file=sys.stderr,
        )
    prof.report()
    dist.shutdown()
    return _exit_status(summary, args)


# Exit status of a run that wrote (or found) its output complete but with skipped records (empty
# or over-long prompts, each with an 'error' field): not 0, so that a script notices; 0 with
# --allow-skips.
EXIT_SKIPPED = 3


def _exit_status(summary: dict[str, Any], args: argparse.Namespace) -> int:
    return EXIT_SKIPPED if summary.get("num_skipped") and not args.allow_skips else 0


def _counts(summary: dict[str, Any], num_records: int | None) -> str:
    """'6 records' / '6 records, 2 skipped (...)'; without num_records, the skips alone."""
    skipped = summary.get("num_skipped") or 0
    total = f"{num_records} records" if num_records is not None else ""
    if not skipped:
        return total
    note = (
        f"{skipped} skipped (their records have an 'error' field; exit status {EXIT_SKIPPED}"
        " unless --allow-skips)"
    )
    return f"{total}, {note}" if total else note


def _on_main(info, fn) -> dict[str, Any]:
    """Run fn on rank 0 and tell every rank how it went: {"error", "exit", "done"}; an
    OutputComplete is reported with its exit status from the output's summary."""
    from samgpu import distributed as dist
    from samgpu.io import OutputComplete

    status: dict[str, Any] = {"error": None, "exit": 0, "done": [], "summary": None}
    if info.is_main:
        try:
            status["done"] = fn() or []
        except OutputComplete as e:
            summary = e.meta.get("summary") or {}
            status.update(error=str(e), summary=summary)
        except UserError as e:
            status.update(error=str(e), exit=e.exit_code)
    return dist.broadcast(status, info)


def _no_stats(args: argparse.Namespace) -> None:
    """An output already complete generates nothing: --stats-json is left as it was, and said so
    (a stats file of zeros would overwrite the run's)."""
    if args.stats_json:
        print(
            f"samgpu: --stats-json {args.stats_json} not written: nothing was generated",
            file=sys.stderr,
        )


def _stop(args: argparse.Namespace, info, status: dict[str, Any]) -> int:
    """End the run on every rank with rank 0's message: an output already complete (exit 0, or
    EXIT_SKIPPED for skipped records) or an error."""
    from samgpu import distributed as dist

    code = status["exit"]
    if status["summary"] is not None:  # complete already
        code = _exit_status(status["summary"], args)
        if info.is_main:
            print(f"samgpu: {status['error']}", file=sys.stderr)
            if code:
                warn(_counts(status["summary"], None))
            _no_stats(args)
    elif info.is_main:
        error(status["error"])
    dist.shutdown()
    return code


def _failed_setup(setup_error: UserError | None, info, writer) -> int:
    """Every rank stops together; a partial file this run holds no record of is removed."""
    from samgpu import distributed as dist

    if setup_error is not None:
        error(str(setup_error))
    if writer is not None:
        writer.close(discard_unstarted=True)
    dist.shutdown()
    return setup_error.exit_code if setup_error is not None else 1


def _check_output_field_is_new(records, args: argparse.Namespace) -> None:
    """--output-field must not replace a field of the input records (its value would be lost from
    the output), except in an earlier samgpu output fed back in: its records hold the field beside
    the finish_reason samgpu wrote, and the new completion replaces the old one."""
    name = args.output_field
    for rec in records:
        if name in rec.data and "finish_reason" not in rec.data:
            raise UserError(
                f"{args.input}:{rec.line}: the record already has a field {name!r}, which the"
                f" completion would overwrite; choose another --output-field"
            )


def _prepare(plan: Plan, records, args):
    """Tokenize every record: (record, ids) to generate, and (index, output record, file:line)
    of those skipped (empty, or too long for the context), each with an 'error'. --strict makes
    a skip an error; so is a file in which no record can run."""
    work, skipped = [], []
    first_problem = None
    for rec in records:
        problem = "empty prompt" if rec.is_empty else None
        ids: list[int] = []
        if problem is None:
            ids = plan.encode(rec.prompt, rec.messages)
            problem = plan.too_long(ids)
        if problem is None:
            work.append((rec, ids))
            continue
        where = f"{args.input}:{rec.line}"
        if args.strict:
            raise UserError(f"{where}: {problem} (--strict)")
        first_problem = first_problem or f"{where}: {problem}"
        out = dict(rec.data)
        out.update({args.output_field: None, "finish_reason": "skipped", "error": problem})
        skipped.append((rec.index, out, where))
    if not work:
        raise UserError(
            f"no record can run: all {len(records)} would be skipped (first: {first_problem});"
            " nothing was written"
        )
    return work, skipped


# skipped records warned about one by one, then counted
MAX_SKIP_WARNINGS = 10


def _warn_skipped(skipped, args) -> None:
    for _, out, where in skipped[:MAX_SKIP_WARNINGS]:
        warn(f"{where}: {out['error']}; skipped (its output record has an 'error' field)")
    if len(skipped) > MAX_SKIP_WARNINGS:
        warn(f"... and {len(skipped) - MAX_SKIP_WARNINGS} more records skipped")


def _output_record(session: Session, rec, tokens: list[int], stats: dict) -> dict[str, Any]:
    from samgpu.api import make_completion

    args = session.args
    done = make_completion(
        tokens, stats, session.tokenizer, session.eos, args.stop, session.stop_ids
    )
    out = dict(rec.data)
    out.pop("error", None)  # (an earlier run's output fed back in: this record is not skipped now)
    out[args.output_field] = done.text
    out["finish_reason"] = done.finish_reason
    out["num_tokens"] = len(done.tokens)
    stats = dict(done.stats)
    if "prefill_s" in stats:  # shared by the requests admitted together: named so
        stats["batch_prefill_s"] = stats.pop("prefill_s")
    out["stats"] = _jsonable(stats)
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
