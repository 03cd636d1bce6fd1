"""The ``lazyflow`` command.  Subcommands that need SymPy import it only when they run."""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazyflow", description="Sample pretrained flow models in fewer steps "
                                     "by integrating them in a lazy schedule.")
    sub = parser.add_subparsers(dest="command", required=True)
    try:
        from derive.cli import add_commands as add_derive_commands
    except ImportError:  # SymPy missing: the sampling commands still work
        add_derive_commands = None
    if add_derive_commands is not None:
        add_derive_commands(sub)
    from . import commands
    commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; bad input prints one line on stderr and exits 2 (LAZYFLOW_DEBUG=1 shows the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError) as err:
        if os.environ.get("LAZYFLOW_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"lazyflow {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lazyflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
