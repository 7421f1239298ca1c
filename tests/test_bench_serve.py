"""profiling/bench_serve.py's GPU busy share counts only the samples taken during the generation
(after the model load and warm-up), not the whole CLI call."""

from __future__ import annotations

from profiling.bench_serve import GpuBusy
from tests.api import fixtures

tiny_model_dir = fixtures.tiny_model_dir


def test_busy_share_keeps_the_samples_from_the_generation_on():
    busy = GpuBusy()
    # load and warm-up (idle GPU, one compile burst), then the generation (busy)
    busy.samples = [(0.0, 0), (0.5, 0), (1.0, 100), (1.5, 0), (2.0, 90), (2.5, 94), (3.0, 98)]
    assert busy.share(since=2.0) == 0.94
    assert busy.share() != busy.share(since=2.0)  # control: the whole call reads otherwise
    assert abs(busy.share() - 382 / 700) < 1e-12
    assert busy.share(since=3.5) is None  # no sample in the window
    assert GpuBusy().share() is None  # no GPU / NVML


def test_run_cli_passes_the_options_through(monkeypatch, tmp_path):
    """run_cli runs the CLI itself with the benchmark's options (method options as -O, the check
    interval and sampling when given) and reads its stats and records back."""
    import argparse
    import json

    import samgpu.cli
    from profiling import bench_serve

    seen = []

    def fake_main(argv):
        seen.append(argv)
        out = argv[argv.index("--output") + 1]
        stats = argv[argv.index("--stats-json") + 1]
        rec = {"completion": "x", "stats": {"finish_s": 0.5, "steps": 3}}
        open(out, "w").write(json.dumps(rec) + "\n")
        open(stats, "w").write(json.dumps({"generate_seconds": 1.0, "new_tokens": 3}))
        return 0

    monkeypatch.setattr(samgpu.cli, "main", fake_main)
    args = argparse.Namespace(
        dtype="bfloat16",
        max_new_tokens=8,
        speculation="adaptive",
        exact=False,
        check_every=None,
        temperature=0.0,
        seed=1,
    )
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    r = bench_serve.run_cli(src, out, args, "merged:max_nodes=12", 4, "continuous")
    argv = seen[-1]
    assert argv[argv.index("--method") + 1] == "merged"
    assert argv[argv.index("-O") + 1] == "max_nodes=12"
    assert "--check-every" not in argv and "--continuous-batching" in argv
    assert "--temperature" not in argv and "--seed" not in argv  # greedy
    assert r["latency"] == [0.5] and r["generate_seconds"] == 1.0
    args.check_every = 4
    bench_serve.run_cli(src, out, args, "ar", 4, "static")
    argv = seen[-1]
    assert argv[argv.index("--check-every") + 1] == "4" and "--no-continuous-batching" in argv
    args.temperature, args.seed = 0.8, 5
    bench_serve.run_cli(src, out, args, "ar", 4, "static")
    argv = seen[-1]
    assert argv[argv.index("--temperature") + 1] == "0.8" and argv[argv.index("--seed") + 1] == "5"


def test_slot_shares_of_a_real_cli_run_add_up(tmp_path, tiny_model_dir):
    """A CPU run of the CLI (3 prompts, 2 slots, continuous, checks every 2 steps): its
    --stats-json carries the slot accounting, and bench_serve's shares plus the occupancy make the
    whole batch (the third prompt runs alone: free slot-steps with none left). Control: a run
    without the accounting reads as unknown, not as zero."""
    import json

    from profiling.bench_serve import occupancy, slot_shares
    from samgpu import cli

    src, out, stats = tmp_path / "p.jsonl", tmp_path / "o.jsonl", tmp_path / "s.json"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Hi", "Hello there", "Yo")))
    argv = ["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--raw", "--input",
            str(src), "--output", str(out), "--overwrite", "--no-progress", "--method", "ar",
            "--batch-size", "2", "--continuous-batching", "--check-every", "2",
            "--max-new-tokens", "6", "--stats-json", str(stats)]  # fmt: skip
    assert cli.main(argv) == 0
    run = json.loads(stats.read_text())
    run["records"] = [json.loads(line) for line in out.read_text().splitlines()]
    slots = run["slot_steps"]
    assert slots["slot_steps"] == 2 * run["steps"]
    parts = ("free_waiting", "free_drained", "pending", "live", "past_end")
    assert sum(slots[f"{p}_slot_steps"] for p in parts) == slots["slot_steps"]
    assert slots["live_slot_steps"] == sum(r["stats"]["steps"] for r in run["records"])
    shares = slot_shares(run)
    assert shares["free_drained"] > 0
    total = occupancy(run, 2) + sum(shares.values())
    assert abs(total - 1.0) < 1e-9
    assert slot_shares({"records": run["records"]})["past_end"] is None


def test_run_cli_names_the_kernels_compiled_inside_the_generation(monkeypatch, tmp_path):
    """Triton compiles (jit_cache_hook calls) inside the timed generation are reported, those of
    the warm-up before it are not; the hook already set still runs and is set back afterwards.
    Control: the same calls with the hook left out of the window would report the warm-up's too."""
    import argparse
    import json
    import time

    import pytest

    knobs = pytest.importorskip("triton.knobs")
    import samgpu.cli
    from profiling import bench_serve
    from profiling.common import TritonCompiles

    earlier = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda **kw: earlier.append(kw["repr"]))

    def fake_main(argv):
        knobs.runtime.jit_cache_hook(repr="_warm_kernel[...]", fn=None)  # the CLI's warm-up
        time.sleep(0.2)
        knobs.runtime.jit_cache_hook(repr="_late_kernel[n: i32]", fn=None)  # mid-generation
        out = argv[argv.index("--output") + 1]
        stats = argv[argv.index("--stats-json") + 1]
        open(out, "w").write(json.dumps({"completion": "x", "stats": {"finish_s": 0.1}}) + "\n")
        open(stats, "w").write(json.dumps({"generate_seconds": 0.1, "new_tokens": 1}))
        return 0

    monkeypatch.setattr(samgpu.cli, "main", fake_main)
    args = argparse.Namespace(dtype="bfloat16", max_new_tokens=4, speculation="adaptive",
                              exact=False, check_every=None, temperature=0.0, seed=1)  # fmt: skip
    r = bench_serve.run_cli(tmp_path / "in.jsonl", tmp_path / "out.jsonl", args, "pld", 4, "static")
    assert r["compiled"] == ["_late_kernel[n: i32]"]
    assert earlier == ["_warm_kernel[...]", "_late_kernel[n: i32]"]  # chained
    assert knobs.runtime.jit_cache_hook is not None and knobs.runtime.jit_cache_hook.__name__ == (
        "<lambda>"
    )  # set back
    with TritonCompiles() as compiles:
        knobs.runtime.jit_cache_hook(repr="a", fn=None)
        knobs.runtime.jit_cache_hook(repr="b", fn=None)
    assert compiles.since(float("-inf")) == ["a", "b"]  # control: the whole call reads both


def test_run_cli_times_the_garbage_collections_inside_the_generation(monkeypatch, tmp_path):
    """Full collections (gc.collect: the oldest generation) inside the timed generation are
    reported with their seconds, the warm-up's are not, and the callback is removed afterwards.
    Control: the whole call reads both."""
    import argparse
    import gc
    import json
    import time

    import samgpu.cli
    from profiling import bench_serve
    from profiling.common import GcPauses

    def fake_main(argv):
        gc.collect()  # the CLI's warm-up
        started = time.perf_counter()  # the generation
        time.sleep(0.05)
        gc.collect()
        out = argv[argv.index("--output") + 1]
        stats = argv[argv.index("--stats-json") + 1]
        open(out, "w").write(json.dumps({"completion": "x", "stats": {"finish_s": 0.1}}) + "\n")
        took = time.perf_counter() - started
        open(stats, "w").write(json.dumps({"generate_seconds": took, "new_tokens": 1}))
        return 0

    monkeypatch.setattr(samgpu.cli, "main", fake_main)
    args = argparse.Namespace(dtype="bfloat16", max_new_tokens=4, speculation="adaptive",
                              exact=False, check_every=None, temperature=0.0, seed=1)  # fmt: skip
    callbacks = list(gc.callbacks)
    r = bench_serve.run_cli(tmp_path / "in.jsonl", tmp_path / "out.jsonl", args, "pld", 4, "static")
    assert len(r["gc_oldest"]) == 1 and r["gc_oldest"][0] > 0
    assert r["gc_seconds"] >= r["gc_oldest"][0]
    assert gc.callbacks == callbacks  # removed
    with GcPauses() as pauses:
        gc.collect()
        gc.collect(0)
    gens = [gen for _, gen in pauses.since(float("-inf"))]
    assert gens[-2:] == [2, 0]  # control: the whole block reads both, with their generations


def test_describe_compile_names_the_specialized_arguments():
    """A compile is described by its kernel and runtime arguments, the 16-divisible ones marked
    (what tells two specializations apart); without the hook's compile data, its repr."""
    from profiling.common import describe_compile

    kwargs = {
        "repr": "_load_rows_kernel[num_warps=4](text_in_ptr: ()",
        "compile": {
            "signature": {
                "text_in_ptr": "*i32",
                "lens_ptr": "*i32",
                "width": "i32",
                "B": "constexpr",
            },
            "configs": [{(0,): [["tt.divisibility", 16]], (2,): [["tt.divisibility", 16]]}],
        },
    }
    got = describe_compile(kwargs)
    assert got == "_load_rows_kernel(text_in_ptr:*i32/16, lens_ptr:*i32, width:i32/16)"
    kwargs["compile"]["configs"] = [{(0,): [["tt.divisibility", 16]]}]
    assert describe_compile(kwargs) != got  # control: another specialization reads otherwise
    assert describe_compile({"repr": "k[...]"}) == "k[...]"


def test_main_warns_when_the_reported_pass_compiled(monkeypatch, tmp_path, capsys):
    """bench_serve's table run prints a WARNING for a configuration whose reported (last) pass
    compiled Triton kernels, and records the counts per pass; a first pass's compiles alone do
    not warn (control: the same run with none in the last pass prints no such line)."""
    from profiling import bench_serve

    calls = []

    def fake_run_cli(src, out, args, method, batch, mode):
        calls.append(method)
        last = len(calls) % 2 == 0  # passes come in pairs: compiles in `compiled` per pass
        compiled = (["_k(n:i32/16)"] if method == "pld" else []) if last else ["_k(n:i32)"]
        n = sum(1 for _ in open(src))
        return dict(
            tokens_per_second=100.0, new_tokens=10, generate_seconds=0.1,
            mean_accepted_tokens=1.0, latency=[0.1], timing={}, gpu_busy=None,
            records=[{"completion": "x"}] * n, compiled=compiled, gc_seconds=0.0, gc_oldest=[],
        )  # fmt: skip

    monkeypatch.setattr(bench_serve, "run_cli", fake_run_cli)
    written = []
    monkeypatch.setattr(
        bench_serve, "write_jsonl", lambda records: written.extend(records) or tmp_path / "r.jsonl"
    )
    argv = ["--batch-sizes", "1", "--methods", "ar,pld", "--modes", "continuous", "--limit", "4"]
    assert bench_serve.main([*argv, "--min-requests", "4"]) == 0
    text = capsys.readouterr().out
    warned = [line for line in text.splitlines() if "Triton compiles" in line]
    want = "WARNING: B=1 continuous pld: 1 Triton compiles inside the reported pass"
    assert warned == [f"{want} (compiled_per_pass)"]  # `ar` compiled in its first pass only
    assert [r["compiles_per_pass"] for r in written] == [[1, 0], [1, 1]]
    assert written[1]["compiled_per_pass"] == [["_k(n:i32)"], ["_k(n:i32/16)"]]


def test_main_refuses_no_passes_before_running_anything(monkeypatch, capsys):
    """--passes 0 is a usage error naming the option (it ran one pass silently), raised before any
    CLI run; control: --passes 1 runs."""
    import pytest

    from profiling import bench_serve

    ran = []
    monkeypatch.setattr(bench_serve, "run_cli", lambda *a: ran.append(a) or 1 / 0)
    with pytest.raises(SystemExit) as exc:
        bench_serve.main(["--batch-sizes", "1", "--methods", "ar", "--passes", "0"])
    assert exc.value.code == 2 and "--passes must be >= 1" in capsys.readouterr().err
    assert ran == []
    with pytest.raises(ZeroDivisionError):  # control: a valid count reaches the run
        bench_serve.main(["--batch-sizes", "1", "--methods", "ar", "--passes", "1", "--limit", "2"])
    assert len(ran) == 1
