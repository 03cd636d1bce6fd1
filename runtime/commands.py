"""Torch-side subcommands of ``lazyflow`` (sampling, training, benchmarks, plots)."""
from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the runtime subcommands."""
