"""`sam` and `sam+tr`: SAM-Decoding's chain drafts from a static and a dynamic suffix automaton.

Per sequence, the decoder keeps a match in each automaton (samgpu.automata): the static one (the
corpus index, shared) and the dynamic one (the sequence's own text, built on the GPU). Each step
`sam_draft_chain` (kernels/sam_draft.py) selects the source and writes the chain into the tree:
- `sam` (official `samd_sam_only`, the paper's "SAM-Decoding" row): no threshold; the automaton with
  the longer match (dynamic wins ties; static length reduced by l_bias = 0), chain nodes =
  min(60, 1 + floor(4 x match_len)); no match -> root only (SOURCE_NONE).
- `sam+tr` (official `samd`): s = static_len - l_bias (5); if max(dyn_len, s) >= l_threshold (5):
  chain of n_predicts = 40 nodes from the dynamic automaton when dyn_len >= s, else the static one;
  otherwise the Token Recycling tree (SOURCE_FALLBACK). Both are computed for every sequence and the
  tree is chosen per sequence with `torch.where` on the source: no Python branch, no sync.
After commit, `update` advances the static matches and extends the dynamic automata over the emitted
tokens (match first, then extend) and, for `sam+tr`, refreshes the Token Recycling table.

Example (`sam+tr`): static_len 12, dyn_len 6 -> s = 7 > 6: a 40-node chain from the static corpus;
static_len 8, dyn_len 3 -> max(3, 3) < 5: the TR tree.

`SamAutomata` (static + dynamic + matches, prefill and per-step advance) is shared with the
`sam-tree` and `merged` drafters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samgpu.automata import DynamicAutomata, Matches, StaticAutomaton
from samgpu.drafters._common import check_batch, check_options, int32, row_text, rows
from samgpu.drafters.tr import TR_TEMPLATE_NODES, TokenRecyclingTable, template_tree
from samgpu.kernels.sam_draft import sam_draft_chain
from samgpu.kernels.sam_select import SamSelectConfig
from samgpu.kernels.sam_update import sam_update
from samgpu.types import SOURCE_FALLBACK, SOURCE_NONE, DecodeState, DraftTree, StepOutput


def load_static(index, device, *, with_count: bool = False) -> StaticAutomaton | None:
    """SamIndex | path | StaticAutomaton | None -> StaticAutomaton on device (None: no static
    automaton). Chain drafters skip the occurrence counts (4 bytes per state), tree drafters need
    them; a StaticAutomaton is used as given (share one between drafters)."""
    if index is None:
        return None
    if isinstance(index, StaticAutomaton):
        if with_count and index.count.numel() == 0:
            raise ValueError("this drafter needs a StaticAutomaton built with_count=True")
        return index
    from samgpu.sam import SamIndex

    if not isinstance(index, SamIndex):
        index = SamIndex.load(index)
    return StaticAutomaton.from_index(index, device, with_count=with_count)


class SamAutomata:
    """The automata of a batch: optional static index, optional dynamic slots, their matches."""

    def __init__(
        self,
        *,
        vocab_size: int,
        max_reqs: int,
        max_len: int,
        device: torch.device | str,
        index,
        use_static: bool,
        use_dynamic: bool,
        with_count: bool = False,
    ):
        self.max_reqs = max_reqs
        self.static = load_static(index, device, with_count=with_count) if use_static else None
        if self.static is not None and self.static.vocab_size > vocab_size:
            raise ValueError(
                f"static index vocab_size {self.static.vocab_size} exceeds the model's {vocab_size}"
            )
        self.dynamic = (
            DynamicAutomata(max_reqs, max_len, vocab_size, device) if use_dynamic else None
        )
        if self.static is None and self.dynamic is None:
            raise ValueError(
                "no automaton: pass a static index (SamIndex or path) or keep use_dynamic=True"
            )
        self._static_matches = Matches.empty(max_reqs, device)

    def static_matches(self, num_reqs: int) -> Matches | None:
        if self.static is None:
            return None
        m = self._static_matches
        return Matches(m.state[:num_reqs], m.match_len[:num_reqs])

    def prefill(self, state: DecodeState) -> None:
        """Build/advance over each sequence's committed text (set-up; validates once)."""
        text, text_len = state.text, state.text_len
        if self.dynamic is not None:
            self.dynamic.prefill(text, text_len)
        if self.static is not None:
            self.static.prefill(self._static_matches, text, text_len)

    def prefill_rows(self, state: DecodeState, rows: torch.Tensor) -> None:
        """Continuous batching: set up the slots `rows` only (their text was just replaced)."""
        text, text_len = row_text(state, rows)
        if self.dynamic is not None:
            self.dynamic.prefill_rows(text, text_len, rows)
        if self.static is not None:
            self.static.prefill_rows(self._static_matches, text, text_len, rows)

    def update(self, step: StepOutput) -> None:
        """Dynamic extension and static match advance over the emitted tokens, in one launch."""
        B = step.new_tokens.shape[0]
        sam_update(self.static, self.static_matches(B), self.dynamic, step.new_tokens, step.num_new)

    def draft_chain(
        self, root: torch.Tensor, tree: DraftTree, config: SamSelectConfig, source, chain_len
    ) -> None:
        B = root.shape[0]
        sam_draft_chain(
            self.static,
            self.static_matches(B),
            self.dynamic,
            root,
            tree,
            config,
            source=source,
            chain_len=chain_len,
        )


@dataclass(frozen=True, kw_only=True)
class SamOptions:
    """`sam`: the official samd_sam_only settings."""

    l_bias: int = 0
    max_predicts: int = 60  # chain nodes at most, root included
    alpha: float = 4.0  # chain nodes = min(max_predicts, 1 + floor(alpha * match_len))
    max_nodes: int | None = None  # tree width cap (batch budget); None: max_predicts
    use_static: bool = True  # draft from the static index when one is given
    use_dynamic: bool = True
    climb_dynamic: bool = False  # the sam_only script does not climb
    stop_at_eos: bool = True

    def select_config(self) -> SamSelectConfig:
        cap = self.max_predicts
        if self.max_nodes is not None:
            cap = min(cap, self.max_nodes)
        return SamSelectConfig(
            mode="longest",
            l_bias=self.l_bias,
            max_predicts=max(1, cap),
            alpha=self.alpha,
            climb_dynamic=self.climb_dynamic,
            stop_at_eos=self.stop_at_eos,
        )


@dataclass(frozen=True, kw_only=True)
class SamTrOptions:
    """`sam+tr`: the paper's defaults (official samd)."""

    l_bias: int = 5
    l_threshold: int = 5
    n_predicts: int = 40  # chain nodes, root included
    max_nodes: int = TR_TEMPLATE_NODES  # tree width: TR template nodes kept; caps the chain too
    prompt_bigrams: bool = True  # seed the TR table from the prompts' bigrams at prefill
    use_static: bool = True
    use_dynamic: bool = True
    climb_dynamic: bool = True
    stop_at_eos: bool = True

    def select_config(self) -> SamSelectConfig:
        return SamSelectConfig(
            mode="threshold",
            l_bias=self.l_bias,
            l_threshold=self.l_threshold,
            n_predicts=max(1, min(self.n_predicts, self.max_nodes)),
            climb_dynamic=self.climb_dynamic,
            stop_at_eos=self.stop_at_eos,
        )


class SamDrafter:
    """`sam` (chain only) and `sam+tr` (chain, else the Token Recycling tree)."""

    graph_safe = True

    def __init__(
        self,
        method: str,
        *,
        vocab_size: int,
        max_reqs: int,
        max_len: int,
        device: torch.device | str,
        index,
        options: SamOptions | SamTrOptions,
    ):
        self.name = method
        self.options = options
        self.max_reqs = max_reqs
        self.device = torch.device(device)
        self.config = options.select_config()
        if options.max_nodes is not None and options.max_nodes < 1:
            raise ValueError(f"max_nodes={options.max_nodes} must be >= 1")
        self.automata = SamAutomata(
            vocab_size=vocab_size,
            max_reqs=max_reqs,
            max_len=max_len,
            device=self.device,
            index=index,
            use_static=options.use_static,
            use_dynamic=options.use_dynamic,
        )
        chain_nodes = self.config.max_chain_nodes
        self.max_nodes = chain_nodes
        self.max_depth = chain_nodes - 1
        self.has_tr = method == "sam+tr"
        if self.has_tr:
            self.template = template_tree(min(options.max_nodes, TR_TEMPLATE_NODES))
            self._tpl = self.template.tensors(self.device)
            self.table = TokenRecyclingTable(vocab_size, self.device)
            self.max_nodes = max(chain_nodes, self.template.num_nodes)
            self.max_depth = max(chain_nodes - 1, self.template.max_depth)
            self._tr_tree = DraftTree.empty(max_reqs, self.max_nodes, self.device)
        self._source = int32((max_reqs,), SOURCE_NONE, self.device)
        self._chain_len = int32((max_reqs,), 0, self.device)
        self.last_source = self._source

    def reset(self) -> None:
        if self.has_tr:
            self.table.reset()

    def prefill(self, state: DecodeState) -> None:
        check_batch(state, self.max_reqs, self.name)
        self.automata.prefill(state)
        if self.has_tr and self.options.prompt_bigrams:
            self.table.seed_from_text(state.text, state.text_len)

    def prefill_rows(self, state: DecodeState, rows: torch.Tensor) -> None:
        self.automata.prefill_rows(state, rows)
        if self.has_tr and self.options.prompt_bigrams:
            self.table.seed_from_text(*row_text(state, rows))

    def propose(self, state: DecodeState, tree: DraftTree) -> None:
        B = state.num_reqs
        source, chain_len = self._source[:B], self._chain_len[:B]
        self.automata.draft_chain(state.root, tree, self.config, source, chain_len)
        self.last_source = source
        if not self.has_tr:
            return
        N = tree.max_nodes
        tr = rows(self._tr_tree, B)
        tr = DraftTree(tr.tokens[:, :N], tr.parents[:, :N], tr.num_nodes)
        self.table.fill(self._tpl, state.root, tr)
        use_tr = source == SOURCE_FALLBACK
        tree.tokens.copy_(torch.where(use_tr[:, None], tr.tokens, tree.tokens))
        tree.parents.copy_(torch.where(use_tr[:, None], tr.parents, tree.parents))
        tree.num_nodes.copy_(torch.where(use_tr, tr.num_nodes, tree.num_nodes))

    def update(self, state: DecodeState, step: StepOutput) -> None:
        self.automata.update(step)
        if self.has_tr:
            self.table.update(step)


def build_sam(method: str, *, vocab_size, max_reqs, max_len, device, index, options: dict):
    cls = SamOptions if method == "sam" else SamTrOptions
    check_options(cls, method, options)
    return SamDrafter(
        method,
        vocab_size=vocab_size,
        max_reqs=max_reqs,
        max_len=max_len,
        device=device,
        index=index,
        options=cls(**options),
    )
