"""samgpu: GPU-resident, batched, lossless speculative decoding with suffix automata.

Importing samgpu is cheap: heavy modules (transformers, the decode loop) load on first use.
"""

__version__ = "0.1.0"
