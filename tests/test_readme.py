"""The README is a front page that stays true: its set-up commands are the ones CI runs, the sampling
command in them works, every code block runs (console sessions print what the README shows), it is at
most 200 lines and its links lead to pages that exist."""
import re
import shlex
from pathlib import Path

import pytest

from markdown_blocks import ROOT, blocks, console_commands, run_lazyflow, run_python_page

README = ROOT / "README.md"
MAX_LINES = 200

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def readme_commands():
    text = README.read_text()
    block = re.search(r"## Set-up\n.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_two_commands_pinned_torch():
    main_job, tests = readme_commands()
    for command in (main_job, tests):
        assert "torch==2.13.0" in command, "an unpinned torch pulls a multi-GB CUDA build"
    assert "lazyflow sample --model digits" in main_job
    assert tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_setup_names_the_python_version_and_the_virtual_environment():
    setup = re.search(r"## Set-up\n(.*?)\n## ", README.read_text(), re.S).group(1)
    assert re.search(r"Python 3\.\d+", setup)
    assert "python3 -m venv .venv && source .venv/bin/activate" in setup
    required = re.search(r"python_requires\s*=\s*>=\s*(3\.\d+)", (ROOT / "setup.cfg").read_text()).group(1)
    assert f"Python {required}" in setup, "the README's Python version is setup.cfg's python_requires"


def test_the_setup_sampling_command_runs(tmp_path, monkeypatch):
    """The part of the first set-up command after the install: draws 64 digits into a PNG."""
    monkeypatch.chdir(tmp_path)
    command = readme_commands()[0].split("&&", 1)[1].strip()
    status, printed = run_lazyflow(command)
    assert status == 0, printed
    out = shlex.split(command)[shlex.split(command).index("--out") + 1]
    from PIL import Image

    assert Image.open(tmp_path / out).size[0] > 8 * 8          # a grid of 64 8x8 digits, zoomed


def test_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= MAX_LINES


def test_every_block_is_run_or_says_why_not():
    for block in blocks(README):
        if block.not_run is not None:
            assert block.not_run, f"{block.where}: <!-- not run: REASON --> needs a reason"


def test_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_python_page(blocks(README)) >= 2


def test_console_sessions_print_what_the_readme_shows(tmp_path, monkeypatch):
    """Each ``$ lazyflow ...`` line runs in a fresh folder, in order, and prints exactly the lines
    shown under it (stdout, then stderr); a session shown without output must print nothing more than
    the ``wrote`` lines it shows."""
    monkeypatch.chdir(tmp_path)
    sessions = [block for block in blocks(README) if block.language == "console" and block.not_run is None]
    assert sessions
    for block in sessions:
        for command in console_commands(block):
            status, printed = run_lazyflow(command.line)
            assert printed.strip() == command.expected.strip(), f"{block.where}: $ {command.line}"
            assert status == (2 if ": error: " in command.expected else 0), f"{block.where}: $ {command.line}"


def test_links_lead_to_files_that_exist():
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
