"""One schedule identity on the command line: every command that takes a schedule takes it in each form (a preset,
a .toml file, a kernel .py file written by emit, --alpha/--beta expressions with --sigma and --param), through the
one schedule group of parsers.py, and each form names the same schedule (the VP path cos/sin(k pi t / 2), k = 1)."""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest

from lazyflow.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

TOML = 'name = "myvp"\nalpha = "cos(k*pi*t/2)"\nbeta = "sin(k*pi*t/2)"\nsigma = "ode"\n[params]\nk = 1\n'
EXPRESSIONS = ["--alpha", "cos(k*pi*t/2)", "--beta", "sin(k*pi*t/2)", "--sigma", "ode", "--param", "k=1",
               "--name", "myvp"]


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """Each form of the same schedule, as command-line words."""
    root = tmp_path_factory.mktemp("forms")
    (root / "myvp.toml").write_text(TOML)
    kernel = Path(__file__).resolve().parents[1] / "runtime" / "kernels" / "vp.py"   # a file emit wrote
    return {"preset": ["--schedule", "vp"], "toml": ["--schedule", str(root / "myvp.toml"), "--param", "k=1"],
            "kernel": ["--schedule", str(kernel)], "expressions": EXPRESSIONS}


FORMS = ["preset", "toml", "kernel", "expressions"]


def run(capsys, *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.slow
def test_derive_each_form(forms, capsys):
    """alpha and beta at t = 0.3 from derive --json: cos and sin of 0.15 pi in every form."""
    for form in FORMS:
        got = json.loads(run(capsys, "derive", *forms[form], "--json"))
        import sympy as sp

        t = sp.Symbol("t")
        for key, expected in (("alpha", math.cos(0.15 * math.pi)), ("beta", math.sin(0.15 * math.pi))):
            value = float(sp.sympify(got[key]).subs({t: 0.3, sp.Symbol("k"): 1}))
            assert value == pytest.approx(expected, rel=1e-12), (form, key)


def test_convert_each_target_form(forms, capsys):
    """The time map from the VP target to the linear source: tan(pi t/2) / (1 + tan(pi t/2)), in every form."""
    import sympy as sp

    for form in FORMS:
        got = json.loads(run(capsys, "convert", "--source", "linear", *forms[form], "--json"))
        value = float(sp.sympify(got["time_map"]).subs({sp.Symbol("t"): 0.3, sp.Symbol("k"): 1}))
        assert value == pytest.approx(math.tan(0.15 * math.pi) / (1 + math.tan(0.15 * math.pi)), rel=1e-10), form


@pytest.mark.slow
def test_emit_each_form(forms, capsys, tmp_path):
    from lazyflow.runtime.kernels import load_file

    for form in FORMS:
        folder = tmp_path / form
        words = [w for w in forms[form]]
        if "--name" not in words:
            words += ["--name", "again"]
        run(capsys, "emit", *words, "--out-dir", str(folder), "--force")
        (path,) = folder.glob("*.py")
        alpha = load_file(path).schedule(__import__("torch").tensor([0.3], dtype=__import__("torch").float64))[0]
        assert float(alpha) == pytest.approx(math.cos(0.15 * math.pi), rel=1e-12), form


def test_sample_each_form_gives_the_same_samples(forms, capsys, tmp_path):
    """The shipped VP kernel and the generated ones give the same digits (float32 rounding apart)."""
    samples = {}
    for form in FORMS:
        out = tmp_path / f"{form}.npy"
        run(capsys, "sample", *forms[form], "--n", "3", "--steps", "3", "--out", str(out))
        samples[form] = np.load(out)
    for form in FORMS[1:]:
        assert np.allclose(samples[form], samples["preset"], atol=1e-5), form


def test_sample_takes_expressions_although_it_has_a_default_schedule(capsys, tmp_path):
    """The default schedule never counts as given: --alpha/--beta alone work; with --schedule they are refused."""
    run(capsys, "sample", "--alpha", "1 - t", "--beta", "t", "--n", "2", "--steps", "2", "--out", str(tmp_path / "a.npy"))
    linear = tmp_path / "b.npy"
    run(capsys, "sample", "--schedule", "linear", "--n", "2", "--steps", "2", "--out", str(linear))
    assert np.allclose(np.load(tmp_path / "a.npy"), np.load(linear), atol=1e-5)
    assert main(["sample", "--schedule", "vp", "--alpha", "1 - t", "--beta", "t", "--out", str(tmp_path / "c.npy")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["sample", "--alpha", "1 - t", "--out", str(tmp_path / "d.npy")]) == 2
    assert "only --alpha was given" in capsys.readouterr().err


def test_tune_grid_each_form(forms, capsys, tmp_path):
    for form in FORMS:
        out = tmp_path / f"{form}.json"
        printed = run(capsys, "tune-grid", *forms[form], "--nfe", "2", "--samples", "4", "--reference-steps", "4",
                      "--max-evals", "3", "--out", str(out))
        grid = json.loads(out.read_text())
        assert grid["times"][0] == 0 and grid["times"][-1] == 1 and len(grid["times"]) == 3, form
        # the printed command runs as written (the schedule in the form it was given)
        (use,) = [line for line in printed.splitlines() if line.startswith("use: lazyflow sample ")]
        words = shlex.split(use[len("use: lazyflow "):])
        words[words.index("--out") + 1] = str(tmp_path / f"{form}.npy")
        run(capsys, *words, "--n", "2")


@pytest.mark.slow
def test_plot_each_form(forms, capsys, tmp_path):
    for form in FORMS:
        out = tmp_path / f"{form}.png"
        run(capsys, "plot", "drift", *forms[form], "--steps", "2", "--out", str(out))
        assert out.stat().st_size > 0 and out.read_bytes()[:4] == b"\x89PNG", form


@pytest.mark.slow
def test_plot_kinds_and_bench_each_form(forms, capsys, tmp_path):
    """The other plot kinds and the bench, whose rows of ours are then the given schedule's only."""
    for form in FORMS:
        for kind in ("schedules", "trajectories"):
            run(capsys, "plot", kind, *forms[form], "--out", str(tmp_path / f"{form}-{kind}.png"))
        run(capsys, "plot", "samples", *forms[form], "--nfe", "2", "--integrators", "euler",
            "--out", str(tmp_path / f"{form}-samples.png"))
        if form not in ("preset", "expressions"):   # the bench's share of the schedule flags is the same code
            continue
        saved = tmp_path / f"{form}.json"
        run(capsys, "bench", *forms[form], "--n", "10", "--nfe", "2", "--quick", "--no-peers", "--metric", "fd",
            "--save", str(saved))
        rows = json.loads(saved.read_text())["rows"]
        assert {r["method"].rsplit("/", 2)[1] for r in rows if not r["peer"]} == {"euler", "multistep", "multistep-pc"}
        if form == "preset":
            assert all(r["method"].startswith("vp/") for r in rows if not r["peer"])


def test_every_command_with_a_schedule_uses_the_one_group():
    """Each parser that takes --schedule also takes --alpha, --beta, --sigma, --param in the same group."""
    from lazyflow.parsers import build_parser

    def parsers(parser):
        for action in parser._actions:
            for sub in (getattr(action, "choices", None) or {}).values() if hasattr(action, "add_parser") else ():
                yield sub
                yield from parsers(sub)

    takers = []
    for sub in parsers(build_parser()):
        flags = {s for a in sub._actions for s in a.option_strings}
        if "--schedule" in flags:
            takers.append(sub.prog)
            assert {"--alpha", "--beta", "--sigma", "--param", "--data-var", "--name"} <= flags, sub.prog
    assert {"lazyflow derive", "lazyflow emit", "lazyflow convert", "lazyflow sample", "lazyflow tune-grid",
            "lazyflow bench", "lazyflow plot drift", "lazyflow stats"} <= set(takers), takers
    assert Path  # the module's imports stay used
