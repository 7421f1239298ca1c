"""The shared vocabulary (draft, accepted, bonus, root, MAT), sentinels and tensor bundles, defined
once in `samgpu.kernels.types` (the ground floor: kernels may import it) and re-exported here for
every layer above. See that module's docstring for the words and a worked example."""

from samgpu.kernels.types import (
    NO_EDGE,
    NO_PARENT,
    NO_POSITION,
    NO_STATE,
    PAD_TOKEN,
    ROOT_STATE,
    SOURCE_DYNAMIC,
    SOURCE_FALLBACK,
    SOURCE_NAMES,
    SOURCE_NONE,
    SOURCE_STATIC,
    SOURCE_STORE,
    DecodeState,
    DraftTree,
    StepOutput,
    TreeMask,
    VerifyOutput,
)

__all__ = [
    "NO_EDGE",
    "NO_PARENT",
    "NO_POSITION",
    "NO_STATE",
    "PAD_TOKEN",
    "ROOT_STATE",
    "SOURCE_DYNAMIC",
    "SOURCE_FALLBACK",
    "SOURCE_NAMES",
    "SOURCE_NONE",
    "SOURCE_STATIC",
    "SOURCE_STORE",
    "DecodeState",
    "DraftTree",
    "StepOutput",
    "TreeMask",
    "VerifyOutput",
]
