"""The README's two set-up commands are the ones CI runs and the ones that work."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
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
