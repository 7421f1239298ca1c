"""samgpu: GPU-resident, batched, lossless speculative decoding with suffix automata.

Importing samgpu is cheap: heavy modules (transformers, the decode loop) load on first use.
"""

__version__ = "0.1.0"

# Public API, imported on first use (PEP 562) so that `import samgpu` stays cheap.
_LAZY = {
    "SamDecoder": "samgpu.api",
    "Completion": "samgpu.api",
    "generate": "samgpu.oneshot",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'samgpu' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
