"""`python -m samgpu ...` (also what `torchrun -m samgpu generate ...` runs): the `samgpu` CLI."""

import sys

from samgpu.cli import main

if __name__ == "__main__":
    sys.exit(main())
