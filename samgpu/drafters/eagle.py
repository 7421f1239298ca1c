"""`eagle`: EAGLE-2 alone (Li et al. 2024): every step, a dynamic draft tree grown by a one-layer
head that predicts the target's next hidden state from (token, hidden state) pairs.

The head is a file (samgpu/drafters/parts/eagle_model.py; trained by `samgpu eagle train`), tied to
the target's embedding and lm_head; its runtime (KV cache, start, catch-up, tree) is
samgpu/drafters/parts/eagle_draft.py. Options (`-O name=value`):
  topk      children per expanded node and frontier width (EAGLE-2: 8-10)           default 8
  depth     deepest draft node (frontier expansions: depth - 1)                     default 4
  max_nodes tree budget, root included (the registry's tree budget per batch size)  default 81
  head      path of a head file; default: the packaged head of the target model (samgpu/data/eagle)
The drafter asks the engine for the target's hidden states (`needs_hidden`): of the prompts at
admission and of every tree node each step. `last_source`: SOURCE_FALLBACK (an auxiliary drafter's
tree) for every draft.

Example: `samgpu generate --method eagle -O topk=10 -O depth=5 --prompt ...`; at B=1, 81 nodes
out of 8 + 3 * 64 = 200 candidates (k 8, depth 4), up to 4 deep. Depth 4 is the default because it
was the fastest on the H200 at B=1 (Spec-Bench 40, `merged+eagle` tok/s at depth 3 / 4 / 5 / 6:
2,361 / 2,419-2,434 / 2,318 / 2,255; `sam+eagle` and `eagle` alike, HumanEval too): the two head
forwards it saves cost more than the acceptance it loses (MAT 4.41 -> 4.28).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from samgpu.drafters.parts import int32
from samgpu.drafters.parts.eagle_draft import EagleDraft
from samgpu.drafters.parts.eagle_model import load_head, read_head
from samgpu.drafters.protocol import DrafterBase, NewRequests
from samgpu.drafters.registry import DrafterContext, Method, register, tree_budget
from samgpu.kernels.vocab_topk import MAX_K as MAX_TOPK
from samgpu.types import SOURCE_FALLBACK, DecodeState, DraftTree, StepOutput

DEFAULT_TOPK = 8
DEFAULT_DEPTH = 4
HEAD_DIR = Path(__file__).resolve().parents[1] / "data" / "eagle"  # packaged heads


@dataclass(frozen=True, kw_only=True)
class EagleFields:
    """The EAGLE options shared by `eagle`, `sam+eagle` and `merged+eagle`."""

    topk: int = DEFAULT_TOPK
    depth: int = DEFAULT_DEPTH
    head: str | None = None  # head file; None: the packaged head of the target

    def check_eagle(self) -> None:
        for name in ("topk", "depth"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.topk > MAX_TOPK:
            raise ValueError(f"topk must be <= {MAX_TOPK}, got {self.topk}")
        if self.head is not None and not isinstance(self.head, (str, Path)):
            raise ValueError(f"head must be a file path, got {self.head!r:.60}")
        if self.head is not None and not Path(self.head).is_file():
            raise ValueError(f"head={str(self.head)!r}: no such EAGLE head file")


@dataclass(frozen=True, kw_only=True)
class EagleOptions(EagleFields):
    max_nodes: int = 81  # tree budget, root included

    def __post_init__(self):
        self.check_eagle()
        if type(self.max_nodes) is not int or self.max_nodes < 1:
            raise ValueError(f"max_nodes must be an int >= 1, got {self.max_nodes!r}")


def check_sha256(path: Path) -> None:
    """A packaged head against the `sha256sum` line beside it (`<file>.sha256`): ValueError when
    the file was damaged (a reinstall restores it)."""
    import hashlib

    want = path.with_name(path.name + ".sha256")
    if not want.is_file():
        return
    expected = want.read_text().split()[0]
    if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        raise ValueError(f"{path}: checksum mismatch with {want.name}; reinstall samgpu")


def default_head_path(target) -> Path:
    """The packaged head (samgpu/data/eagle/*.safetensors) made for the target's vocabulary and
    hidden size; ValueError naming the `head` option when there is none."""
    vocab, hidden = int(target.vocab_size), int(target.hidden_size)
    files = sorted(HEAD_DIR.glob("*.safetensors")) if HEAD_DIR.is_dir() else []
    for path in files:
        meta = read_head(path, tensors=False).target
        if meta.get("vocab_size") == vocab and meta.get("hidden_size") == hidden:
            check_sha256(path)
            return path
    raise ValueError(
        f"no packaged EAGLE head for this target (vocabulary {vocab}, hidden size {hidden}) in "
        f"{HEAD_DIR}: pass a head file with -O head=PATH (train one with `samgpu eagle train`)"
    )


def build_eagle(
    ctx: DrafterContext, options: EagleFields, *, max_nodes: int, path_slots: int
) -> EagleDraft:
    """The EAGLE runtime of a drafter: the head (options.head or the packaged one) tied to the
    target's embed / lm_head, with buffers for ctx.max_reqs slots. path_slots: see EagleDraft."""
    target = ctx.target
    if target is None or not all(hasattr(target, a) for a in ("embed", "lm_head", "dtype")):
        raise ValueError(
            "EAGLE drafting needs the target's runner (its embed, lm_head and dtype): build the "
            "decoder through samgpu.factory.build_decoder, or pass target= to build_drafter"
        )
    path = Path(options.head) if options.head is not None else default_head_path(target)
    if not path.is_file():
        raise ValueError(f"head={str(path)!r}: no such EAGLE head file")
    head = load_head(path, target.embed, target.lm_head, dtype=target.dtype)
    return EagleDraft(
        head,
        max_reqs=ctx.max_reqs,
        max_len=ctx.max_len,
        max_nodes=max_nodes,
        topk=options.topk,
        depth=options.depth,
        path_slots=path_slots,
    )


class EagleDrafter(DrafterBase):
    name = "eagle"
    needs_hidden = True

    def __init__(self, ctx: DrafterContext, options: EagleOptions):
        self.options = options
        self.eagle = build_eagle(ctx, options, max_nodes=options.max_nodes, path_slots=1)
        self.max_nodes = self.eagle.max_nodes
        self.max_depth = self.eagle.max_depth
        self.last_source = int32((ctx.max_reqs,), SOURCE_FALLBACK, ctx.device)

    def start(self, state: DecodeState, new: NewRequests) -> None:
        self.eagle.start(state, new)

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        self.eagle.propose(state.root, tree)

    def update(self, state: DecodeState, step: StepOutput) -> None:
        self.eagle.update(step)


register(
    Method(
        name="eagle",
        summary="EAGLE-2: dynamic draft tree from a one-layer head on the target's hidden states",
        options=EagleOptions,
        build=EagleDrafter,
        budget=tree_budget,
        head_layers=1,
    )
)
