"""The method registry: names, option validation, budgets, and adding a method from outside the
package (one file and one registry entry), run end to end through the CLI."""

import json

import pytest

from samgpu.drafters import (
    budget_options,
    build_drafter,
    get_method,
    method_names,
    register,
    unregister,
)
from samgpu.drafters.registry import Method, pld_budget, tree_budget

COMMON = dict(vocab_size=50, max_reqs=2, max_len=64, device="cpu")


def test_methods_listed():
    assert method_names() == (
        "ar", "pld", "tr", "sam", "sam+tr", "sam-tree", "merged", "eagle", "sam+eagle",
        "merged+eagle",
    )  # fmt: skip
    assert "test" in method_names(listed_only=False) and "test" not in method_names()


def test_unknown_method_names_valid_ones():
    with pytest.raises(ValueError, match="valid.*sam\\+tr"):
        build_drafter("medusa", **COMMON)


@pytest.mark.parametrize("method", ["pld", "tr", "sam", "sam+tr", "sam-tree", "merged"])
def test_unknown_option_names_valid_ones(method):
    with pytest.raises(ValueError, match="unknown option.*valid"):
        build_drafter(method, **COMMON, bogus=1)


def test_unknown_option_of_a_method_without_options_says_so():
    """`ar` takes no options: a stray keyword (samgpu.generate's typo) is named as such, not
    answered with an empty list of valid names."""
    with pytest.raises(ValueError, match="it takes none"):
        build_drafter("ar", **COMMON, max_new_token=1)


def test_pld_and_tr_shapes():
    pld = build_drafter("pld", **COMMON, max_nodes=6)
    assert (pld.max_nodes, pld.max_depth) == (6, 5)
    tr = build_drafter("tr", **COMMON)
    assert (tr.max_nodes, tr.max_depth) == (81, 6)
    small = build_drafter("tr", **COMMON, max_nodes=8)
    assert small.max_nodes == 8 and small.max_depth == 3


def test_pld_chain_follows_the_batch_size_unless_given():
    """11 nodes (10 drafts) up to B=4, 7 at 16, 5 beyond (the measured table); the factory's
    options take the rule at B and the caller's max_nodes over it."""
    from samgpu.factory import method_options

    assert [pld_budget(b) for b in (1, 4, 16, 64, 256)] == [11, 11, 7, 5, 5]
    assert method_options("pld", 64, "cuda") == {"max_nodes": 5}
    assert method_options("pld", 64, "cuda", {"max_nodes": 9}) == {"max_nodes": 9}
    assert method_options("pld", 1, "cpu") == {"max_nodes": 4}  # CPU_MAX_NODES
    assert build_drafter("pld", **COMMON, **budget_options("pld", 256)).max_depth == 4
    with pytest.raises(ValueError, match="max_nodes=1 must be >= 2"):
        build_drafter("pld", **COMMON, max_nodes=1)


def test_tree_budget_shrinks_with_batch():
    sizes = [tree_budget(b) for b in (1, 2, 4, 8, 16, 32, 64)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] >= 64 and sizes[-1] <= 8
    assert budget_options("ar", 1) == {}
    with pytest.raises(ValueError):
        budget_options("nope", 1)


def test_sam_methods_budget_option_sets_tree_width():
    """max_nodes (the batch budget) caps the tree width of every SAM method; sam+tr keeps the
    chain within it too (n_predicts 40 -> 16)."""
    for method in ("sam", "sam+tr", "sam-tree", "merged"):
        d = build_drafter(method, **COMMON, max_nodes=16)
        assert d.max_nodes == 16, method
        assert 0 <= d.max_depth < 16
    assert build_drafter("sam+tr", **COMMON, max_nodes=16).config.n_predicts == 16
    assert build_drafter("sam", **COMMON).max_nodes == 60


def test_budget_options_only_for_methods_with_a_tree_width():
    """ar has no draft: no max_nodes; pld, the tree methods and sam get their budget rule's
    width, which build_drafter accepts, and every method's declared node bound covers what it
    builds."""
    assert budget_options("ar", 1) == {}
    for method in ("pld", "tr", "sam", "sam+tr", "sam-tree", "merged"):
        opts = budget_options(method, 16)
        assert opts == {"max_nodes": get_method(method).budget(16)}
        drafter = build_drafter(
            method, vocab_size=64, max_reqs=1, max_len=128, device="cpu", **opts
        )
        entry = get_method(method)
        assert drafter.max_nodes == opts["max_nodes"] <= entry.max_nodes(entry.options(**opts))


def test_register_refuses_a_taken_name_and_a_budget_without_max_nodes():
    ar = get_method("ar")
    with pytest.raises(ValueError, match="already registered"):
        register(Method(name="ar", summary="", options=ar.options, build=ar.build))
    with pytest.raises(TypeError, match="budget rule but no max_nodes"):
        register(
            Method(name="x", summary="", options=ar.options, build=ar.build, budget=tree_budget)
        )
    assert "x" not in method_names(listed_only=False)


@pytest.fixture
def prompt_echo():
    from tests.drafters.prompt_echo import register_method

    method = register_method()
    yield method
    unregister(method.name)


def _cli(tmp_path, method: str, prompts) -> list[dict]:
    from samgpu.cli import main

    src, out = tmp_path / f"in-{method}.jsonl", tmp_path / f"out-{method}.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    argv = ["generate", "--input", str(src), "--output", str(out), "--method", method]
    argv += ["--max-new-tokens", "12", "--device", "cpu", "--dtype", "float32", "--no-progress"]
    argv += ["--batch-size", "2", "--index", "none"]
    assert main(argv) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_a_method_added_from_outside_runs_through_the_cli(prompt_echo, tmp_path):
    """tests/drafters/prompt_echo.py is a whole new method; once registered, the CLI lists and
    runs it, and greedy output equals ar's (its drafts are mostly wrong: verification keeps only
    what the model would say)."""
    assert "prompt-echo" in method_names()
    prompts = ["Name three primes.", "Say hello.", "Count to five."]
    echo = _cli(tmp_path, "prompt-echo", prompts)
    ar = _cli(tmp_path, "ar", prompts)
    assert [r["completion"] for r in echo] == [r["completion"] for r in ar]
    assert all(r["stats"]["steps"] >= 1 for r in echo)


def test_an_unregistered_method_is_a_usage_error(tmp_path, capsys):
    """Negative control: without the registration the same command is refused (exit 2)."""
    from samgpu.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    argv = ["generate", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]
    assert main([*argv, "--method", "prompt-echo", "--device", "cpu"]) == 2
    assert "unknown method 'prompt-echo'" in capsys.readouterr().err


def test_cpu_caps_the_budget_gpu_follows_the_batch():
    """On a CPU every tree method drafts at most CPU_MAX_NODES nodes (a CPU verifies N nodes at
    ~N times one token's cost) and the batch rule still shrinks it; on a GPU the rule alone
    decides (16 nodes at B=16, 8 at B=64). An explicit max_nodes wins on both."""
    from samgpu.factory import CPU_MAX_NODES, method_options

    for method in ("tr", "sam+tr", "merged"):
        assert method_options(method, 1, "cpu")["max_nodes"] == CPU_MAX_NODES
        assert method_options(method, 256, "cpu")["max_nodes"] == tree_budget(256) < CPU_MAX_NODES
        assert method_options(method, 16, "cuda")["max_nodes"] == tree_budget(16) == 16
        assert method_options(method, 64, "cuda")["max_nodes"] == tree_budget(64) == 8
        assert method_options(method, 1, "cpu", {"max_nodes": 9})["max_nodes"] == 9


def test_option_values_of_the_wrong_type_are_named():
    """`-O max_nodes=abc` (a string where an int goes), True for an int, 2.5 for an int: one
    ValueError naming the method, the option and the value, before the dataclass compares it;
    an int for a float option, None for an optional int and the right types pass (controls)."""
    from samgpu.drafters.registry import make_options

    merged = get_method("merged")
    for bad, shown in (("abc", "'abc'"), (True, "True"), (2.5, "2.5")):
        with pytest.raises(
            ValueError, match=f"method 'merged': max_nodes must be an int, got {shown}"
        ):
            make_options(merged, {"max_nodes": bad})
    with pytest.raises(ValueError, match="chain_nodes must be an int or None, got 'x'"):
        make_options(merged, {"chain_nodes": "x"})
    assert make_options(merged, {"max_nodes": 8, "chain_nodes": None}).max_nodes == 8
    assert make_options(get_method("sam"), {"alpha": 2}).alpha == 2
    with pytest.raises(ValueError, match="alpha must be a number, got 'high'"):
        make_options(get_method("sam"), {"alpha": "high"})


def test_trees_wider_than_the_cap_are_refused():
    """A huge -O max_nodes (1e11 tried to allocate petabytes) is one ValueError naming the cap;
    the cap itself is allowed."""
    from samgpu.drafters.registry import MAX_DRAFT_NODES

    with pytest.raises(ValueError, match=f"at most {MAX_DRAFT_NODES}"):
        build_drafter("pld", **COMMON, max_nodes=99_999_999_999)
    build_drafter("pld", **COMMON, max_nodes=MAX_DRAFT_NODES)
