"""A torchrun entry point for tests: `samgpu generate` in which rank 1 runs out of GPU memory in
its first batch (`python -m torch.distributed.run ... -m tests._fail_rank generate ...`)."""

import os
import sys

import torch

from samgpu import cli
from samgpu.cli import generate as cli_generate

_real_generate = cli_generate.Session.generate


def _generate(self, *args, **kwargs):
    if os.environ.get("RANK") == "1":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    return _real_generate(self, *args, **kwargs)


cli_generate.Session.generate = _generate

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
