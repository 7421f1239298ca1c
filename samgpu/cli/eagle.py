"""`samgpu eagle train ...`: train an EAGLE head (samgpu.eagle.train; docs/EAGLE.md).

samgpu eagle train --out smollm2.eagle.safetensors [--minutes 4] [--model default|PATH] ...
"""

from __future__ import annotations

import argparse

from samgpu.eagle.train import HelpFormatter, add_train_arguments


def add_eagle_parser(subparsers) -> argparse.ArgumentParser:
    """Add `eagle {train}` to an argparse subparsers object; returns the `eagle` parser."""
    eagle = subparsers.add_parser("eagle", help="train an EAGLE draft head for a model")
    sub = eagle.add_subparsers(dest="eagle_command", required=True, metavar="{train}")
    train = sub.add_parser(
        "train",
        help="train a head on the model's hidden states over its own responses",
        description="Train an EAGLE head for a target model on the target's own hidden states"
        " over its own responses; writes the head, <out>.sha256, and one JSON line.",
        formatter_class=HelpFormatter,
    )
    add_train_arguments(train)
    return eagle


def run_eagle(args: argparse.Namespace) -> int:
    """Run `eagle train`; user errors propagate as UserError (samgpu.cli prints one line)."""
    from samgpu.eagle.train import run

    return run(args)
