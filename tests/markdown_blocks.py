"""Fenced code blocks of the README and the docs pages, and how the tests run them.

Convention (README and docs/*.md alike): a ```python block runs, in order, in one namespace per page,
in a temporary working directory; ```console sessions of the README are run command by command and
their printed output compared; ```text, ```bash, ```toml, ... blocks are not run.  A block preceded by
the line ``<!-- not run: REASON -->`` is skipped, and REASON must say why.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<info>[^`\n]*)$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, its text (dedented), the line it starts on, and, when the
    line above it is ``<!-- not run: REASON -->``, that reason (stripped; may be empty)."""

    path: Path
    language: str
    code: str
    line: int
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order (a fence closes on a fence of the same kind)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, k = [], 0
    while k < len(lines):
        match = FENCE.match(lines[k])
        if not match:
            k += 1
            continue
        indent, fence = match["indent"], match["fence"]
        language = match["info"].strip().split(" ")[0].lower() if match["info"].strip() else ""
        previous = next((lines[j] for j in range(k - 1, -1, -1) if lines[j].strip()), "")
        skip = NOT_RUN.match(previous)
        body, j = [], k + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        found.append(Block(path, language, "\n".join(body) + "\n", k + 1, skip["reason"].strip() if skip else None))
        k = j + 1
    return found


def run_python_page(page_blocks: list[Block]) -> int:
    """Run a page's ```python blocks in order in one namespace; returns how many ran."""
    namespace: dict = {"__name__": "__main__"}
    ran = 0
    for block in page_blocks:
        if block.language != "python" or block.not_run is not None:
            continue
        exec(compile(block.code, block.where, "exec"), namespace)   # noqa: S102 (the docs' own examples)
        ran += 1
    return ran


@dataclass(frozen=True)
class Command:
    """One ``$ lazyflow ...`` line of a console session and the output printed under it."""

    line: str
    expected: str


def console_commands(block: Block) -> list[Command]:
    """The commands of a console session with the lines shown under each (up to the next ``$``)."""
    commands: list[Command] = []
    for raw in block.code.splitlines():
        if raw.startswith("$ "):
            commands.append(Command(raw[2:].strip(), ""))
        elif commands:
            last = commands[-1]
            commands[-1] = Command(last.line, last.expected + raw + "\n")
    return commands


def run_lazyflow(line: str) -> tuple[int, str]:
    """Run one ``lazyflow ...`` command line in this process (``lazyflow.cli.main``); returns the exit
    status and what it printed (stdout, then stderr)."""
    from lazyflow.cli import main

    argv = shlex.split(line)
    assert argv[0] == "lazyflow", f"only lazyflow commands run here: {line}"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv[1:])
        except SystemExit as stop:          # argparse's refusals
            status = stop.code if isinstance(stop.code, int) else 2
    return status, out.getvalue() + err.getvalue()
