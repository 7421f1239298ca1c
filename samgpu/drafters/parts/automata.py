"""The SAM-Decoding automata of a batch, as one drafting part: an optional static automaton (the
corpus index on the device, shared), optional dynamic automata (one per slot, built from the
sequence's own text on the GPU) and an optional cross-request store (parts/store.py: earlier
responses, shared), with each sequence's match in each (samgpu.automata).

Lifecycle: `prepare` builds the dynamic automata of newly admitted slots and walks their static
matches over the prompts (beside other slots' steps when the engine can), `start` the store's;
`update` extends the dynamic automata and advances the static and store matches over each step's
emitted tokens (one launch, kernels/sam_update.py); `draft_chain` writes the selected chain
(kernels/sam_draft.py); `finish` appends the finished responses to the store. Used by `sam`,
`sam+tr`, `sam-tree`, `merged`, `sam+eagle` and `merged+eagle`.
"""

from __future__ import annotations

import torch

from samgpu.automata import DynamicAutomata, Matches, StaticAutomaton
from samgpu.drafters.parts.store import SamStore, StoreOptions, index_fingerprint
from samgpu.drafters.protocol import NewRequests
from samgpu.kernels.sam_draft import SamSelectConfig, sam_draft_chain
from samgpu.kernels.sam_update import sam_update
from samgpu.types import DecodeState, DraftTree, StepOutput


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
    """The automata of a batch: optional static index, optional dynamic slots, optional store,
    their matches. `store`: StoreOptions (the method's options; a store when `has_store`)."""

    @classmethod
    def for_method(cls, ctx, options, *, with_count: bool = False) -> SamAutomata:
        """The automata a method's options ask for (`use_static`, `use_dynamic`, the store's
        fields) over a DrafterContext's slots, vocabulary and index."""
        return cls(
            vocab_size=ctx.vocab_size,
            max_reqs=ctx.max_reqs,
            max_len=ctx.max_len,
            device=ctx.device,
            index=ctx.index,
            use_static=options.use_static,
            use_dynamic=options.use_dynamic,
            with_count=with_count,
            store=options,
        )

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
        store: StoreOptions | None = None,
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
        self.store = None
        if store is not None and store.has_store:
            self.store = SamStore(
                store,
                vocab_size=vocab_size,
                max_reqs=max_reqs,
                device=device,
                fingerprint=index_fingerprint(index),
            )
        if self.static is None and self.dynamic is None and self.store is None:
            raise ValueError(
                "no automaton: pass a static index (SamIndex or path), keep use_dynamic=True, or "
                "turn the store on"
            )
        self._static_matches = Matches.empty(max_reqs, device)

    def static_matches(self, num_reqs: int) -> Matches | None:
        if self.static is None:
            return None
        m = self._static_matches
        return Matches(m.state[:num_reqs], m.match_len[:num_reqs])

    def prepare(self, state: DecodeState, new: NewRequests) -> None:
        """Slots `new.rows` got new prompts: build their dynamic automata and static matches over
        the prompts (new.prompts(state)); other slots are untouched (read or written), so this
        may run beside decode steps of the other slots (Drafter.prepare)."""
        text = new.prompts(state)
        if self.dynamic is not None:
            self.dynamic.start_rows(new.rows, text, new.lengths)
        if self.static is not None:
            matches = self.static_matches(state.num_reqs)
            self.static.start_rows(matches, new.rows, text, new.lengths)

    def start(self, state: DecodeState, new: NewRequests) -> None:
        """`prepare` unless done (`new.prepared`), then the store's matches (the store is shared:
        it waits for the slots' landing)."""
        if not new.prepared:
            self.prepare(state, new)
        if self.store is not None:
            self.store.start(state, new)

    @property
    def store_automaton(self):
        return None if self.store is None else self.store.automaton

    def update(self, step: StepOutput) -> None:
        """Dynamic extension, static and store match advance over the emitted tokens, in one
        launch."""
        B = step.new_tokens.shape[0]
        sam_update(
            self.static,
            self.static_matches(B),
            self.dynamic,
            step.new_tokens,
            step.num_new,
            store=self.store_automaton,
        )

    def finish(self, state: DecodeState, rows: torch.Tensor) -> None:
        """Finished requests in slots `rows`: their responses go into the store (if any)."""
        if self.store is not None:
            self.store.finish(state, rows)

    def draft_chain(
        self,
        root: torch.Tensor,
        tree: DraftTree,
        config: SamSelectConfig,
        source: torch.Tensor,
        chain_len: torch.Tensor,
    ) -> None:
        """Select the source per sequence and write its chain into `tree` (sam_draft_chain)."""
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
            store=self.store_automaton,
        )
