"""The derivation commands: JSON in the documented keys, parsable by SymPy, and clean refusals."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from sympy.parsing.sympy_parser import parse_expr

from lazyflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = {name: sp.Symbol(name) for name in ("t", "x", "eta_X", "eta_Z")}


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    out = json.loads(capsys.readouterr().out)
    return {k: parse_expr(v, local_dict=SYMBOLS) for k, v in out.items()}


def close(expr, expected, **values):
    subs = {SYMBOLS[k]: v for k, v in values.items()}
    assert complex(sp.N(expr.subs(subs))) == pytest.approx(complex(sp.N(expected.subs(subs))), abs=1e-10)


def test_derive_json_keys_and_values(capsys):
    out = run_json(capsys, "derive", "--schedule", "linear", "--sigma", "optimal", "--json")
    assert set(out) == {"alpha", "beta", "sigma", "snr", "eps", "eps_star", "velocity", "score", "drift",
                        "gaussian_drift"}
    for value in out.values():
        assert value.free_symbols <= set(SYMBOLS.values())
    t, x, ex, ez = (SYMBOLS[k] for k in ("t", "x", "eta_X", "eta_Z"))
    close(out["eps_star"], (1 - t) / t, t=0.3)
    close(out["velocity"], ex - ez, t=0.3, eta_X=0.2, eta_Z=-0.5)
    close(out["score"], -ez / (1 - t), t=0.3, eta_Z=0.4)
    # drift with eps*: K_x = -(1 + t)/(t (1 - t)), K_e = 2/(1 - t)
    close(out["drift"], -(1 + t) / (t * (1 - t)) * x + 2 / (1 - t) * ex, t=0.4, x=0.3, eta_X=-0.2)


def test_derive_custom_expressions_with_params(capsys):
    out = run_json(capsys, "derive", "--alpha", "cos(k*pi*t/2)", "--beta", "sin(k*pi*t/2)", "--param", "k=1",
                   "--json")
    assert out["gaussian_drift"] == 0


def test_lazy_json(capsys):
    out = run_json(capsys, "lazy", "--beta", "t", "--sigma", "optimal", "--json")
    t = SYMBOLS["t"]
    close(out["alpha"] ** 2, t * (1 - t), t=0.3)
    close(out["sigma"], sp.Integer(1), t=0.3)


def test_convert_json(capsys):
    out = run_json(capsys, "convert", "--source", "linear", "--target", "vp", "--json")
    t = SYMBOLS["t"]
    close(out["time_map"], sp.sin(sp.pi * t / 2) / (sp.sin(sp.pi * t / 2) + sp.cos(sp.pi * t / 2)), t=0.3)
    close(out["scale"], sp.sin(sp.pi * t / 2) + sp.cos(sp.pi * t / 2), t=0.3)


def test_latex_and_text(capsys):
    assert main(["derive", "--schedule", "vp", "--latex"]) == 0
    assert "\\frac" in capsys.readouterr().out
    assert main(["derive", "--schedule", "pointmass"]) == 0
    assert "pointmass: pointmass schedule" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["derive", "--schedule", "nope"], "unknown schedule 'nope'"),
    (["derive", "--alpha", "1 - t", "--beta", "__import__('os')"], "dunder name"),
    (["derive", "--alpha", "1 - t", "--beta", "2*t"], "beta_1 = 2"),
    (["derive", "--alpha", "1 - t"], "give --schedule NAME, or both --alpha and --beta"),
    (["lazy", "--alpha", "1 - t", "--beta", "t"], "lazy diffusion would be negative"),
    (["derive", "--schedule", "missing.toml"], "does not exist"),
])
def test_bad_input_is_one_line_without_traceback(argv, fragment, capsys):
    """The first case runs the real ``python -m lazyflow`` (start-up warnings would show there); the others
    call the same main() in this process, without a Python start-up each."""
    if argv[-1] == "nope":
        proc = subprocess.run([sys.executable, "-m", "lazyflow", *argv], capture_output=True, text=True, cwd=ROOT)
        returncode, stderr = proc.returncode, proc.stderr
    else:
        try:
            returncode = main(argv)
        except SystemExit as exit_:
            returncode = exit_.code
        stderr = capsys.readouterr().err
    assert returncode == 2
    assert fragment in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_toml_schedule(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nalpha = "cos(pi*t/2)**k"\nbeta = "sin(pi*t/2)"\nsigma = "optimal"\n[params]\nk = 1\n')
    out = run_json(capsys, "derive", "--schedule", str(path), "--json")
    t = SYMBOLS["t"]
    close(out["eps_star"], sp.pi / 2 * sp.cot(sp.pi * t / 2), t=0.4)
    bad = tmp_path / "bad.toml"
    bad.write_text('alpha = "1 - t"\nbeta = "t"\nextra = 1\n')
    assert main(["derive", "--schedule", str(bad)]) == 2
    assert "unknown keys ['extra']" in capsys.readouterr().err


def test_careless_input_of_issue_9(tmp_path, capsys):
    """--alpha -t+1 is an expression, not an option; --json and --latex together are refused; a bench file
    without rows is named as such."""
    out = run_json(capsys, "derive", "--alpha", "-t+1", "--beta", "t", "--json")
    assert out["alpha"] == 1 - SYMBOLS["t"]
    with pytest.raises(SystemExit):
        main(["derive", "--schedule", "linear", "--json", "--latex"])
    assert "not allowed with argument" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert main(["plot", "bench", "--from", str(empty), "--out", str(tmp_path / "q.png")]) == 2
    assert "not a bench result" in capsys.readouterr().err


@pytest.mark.slow
def test_a_conversion_the_runtime_can_do_is_no_cli_error(capsys):
    assert main(["convert", "--source", "score-vp", "--target", "pointmass"]) == 0
    assert "time_map" in capsys.readouterr().out


def test_derive_builds_every_parser_without_torch():
    """Choices and help texts come from the runtime registries only when argparse needs them."""
    code = ("import sys; from lazyflow.cli import main; from lazyflow.parsers import build_parser; build_parser(); "
            "main(['derive', '--schedule', 'linear', '--json']); assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert proc.returncode == 0, proc.stderr


def test_sample_help_lists_the_registries(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in ("multistep-pc", "Euler / Euler-Maruyama", "logsnr-open:FIRST,LAST", "edm", "gmm4096", "sit-xl/2",
                 "denoise"):
        assert name in out
    assert "issue" not in out


def test_sample_takes_the_data_statistics_of_the_data_frame_integrators(tmp_path, capsys):
    import torch

    from lazyflow.runtime.core.data_stats import DataStats

    stats = DataStats.from_samples(0.5 * torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    path = stats.save(tmp_path / "stats.safetensors")
    argv = ["sample", "--schedule", "linear", "--integrator", "data-multistep", "--steps", "4", "--n", "4",
            "--out", str(tmp_path / "x.npy")]
    assert main([*argv, "--data-stats", str(path)]) == 0
    with_file = np.load(tmp_path / "x.npy")
    # without a file: the frame N(E[X | c], I), other samples from the same noise
    assert main([*argv, "--force"]) == 0
    assert not np.array_equal(np.load(tmp_path / "x.npy"), with_file)
    assert main([*argv, "--force", "--data-stats", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_every_parsed_command_has_a_handler_and_the_parsers_never_import_the_shell():
    """parsers.py records each command's name; cli.py maps the names to its handlers (no import circle)."""
    import ast

    from lazyflow import cli
    from lazyflow.parsers import build_parser

    names = build_parser()._subparsers._group_actions[0].choices
    assert {"derive", "sample", "stats", "plot"} <= set(names)
    assert all(callable(cli.handler_for(name)) for name in names)
    tree = ast.parse((ROOT / "parsers.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and "cli" in m.split(".")}


def test_the_schedule_flags_are_library_calls():
    """spec_from_parts (derive) and load_schedule_parts (runtime) turn the schedule flags into one schedule."""
    from lazyflow.derive.flags import spec_from_parts
    from lazyflow.errors import LazyflowError
    from lazyflow.runtime.core.schedule import load_schedule, load_schedule_parts

    assert load_schedule_parts("sd3", params={"shift": "1.7"}) == load_schedule("sd3", shift=1.7)
    with pytest.raises(LazyflowError, match="--param: values must be numbers"):
        load_schedule_parts("sd3", params={"shift": "big"})
    spec = spec_from_parts(alpha="cos(k*pi*t/2)", beta="sin(k*pi*t/2)", params={"k": "1"}, data_var="2", name="mine")
    assert (spec.name, str(spec.data_var), dict(spec.params)) == ("mine", "2", {"k": 1})
    assert spec_from_parts("linear", sigma="optimal").diffusion == "optimal"
    with pytest.raises(LazyflowError, match="not both"):
        spec_from_parts("linear", alpha="1 - t")


def test_lazy_with_a_data_mean_prints_the_centred_frame(capsys):
    """lazy --data-mean: the schedule of mean 0 (here the point mass for the optimal SDE) and the notes on
    the centred frame w = x - beta mu; a mean naming t is refused in one line."""
    from lazyflow.cli import main

    assert main(["lazy", "--beta", "t", "--sigma", "optimal", "--data-mean", "mu", "--data-var", "v"]) == 0
    out = capsys.readouterr().out
    assert "alpha = sqrt(t)*sqrt(v)*sqrt(1 - t)" in out and "N(mu, v I)" in out and "w = x - beta mu" in out
    assert main(["lazy", "--beta", "t", "--sigma", "optimal", "--data-mean", "t"]) == 2
    assert "unknown symbol 't'" in capsys.readouterr().err


@pytest.mark.slow
def test_train_classifier_honours_steps(tmp_path, monkeypatch, capsys):
    """--steps counts the classifier's optimiser steps (the recipe's 60 epochs when not given)."""
    import torch

    from lazyflow.runtime.models import train as train_module

    calls = []

    class Counting(torch.optim.Adam):
        def step(self, *args, **kwargs):
            calls.append(1)
            return super().step(*args, **kwargs)

    monkeypatch.setattr(train_module.torch.optim, "Adam", Counting)
    assert main(["train", "classifier", "--steps", "3", "--out-dir", str(tmp_path)]) == 0
    assert len(calls) == 3
    card = json.loads((tmp_path / "digits_classifier.json").read_text())
    assert card["steps"] == 3 and card["command"] == "lazyflow train classifier --steps 3"
    assert main(["train", "classifier", "--steps", "0", "--out-dir", str(tmp_path)]) == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err


def test_shape_is_one_flag_with_one_reading(capsys):
    """``--shape`` of ``sample``, ``bench --model-kind`` and ``stats --from-model`` is one declaration: the same
    type, help and refusal."""
    from lazyflow.parsers import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    flags = [next(a for a in commands[name]._actions if "--shape" in a.option_strings)
             for name in ("sample", "bench", "stats")]
    assert len({(f.type, f.help, f.metavar) for f in flags}) == 1 and flags[0].metavar == "C,H,W"
    assert commands["sample"].parse_args(["--shape", "1, 8,8", "--out", "x.npy"]).shape == (1, 8, 8)
    for argv in (["sample", "--out", "x.npy"], ["bench", "--model", "m.pt", "--model-kind", "torchscript"]):
        for bad in ("1,x", "0", "2,-1", ""):
            with pytest.raises(SystemExit):
                main([*argv, "--shape", bad])
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"argument --shape: cannot read {bad!r} as a data shape: comma-separated " \
                                              "positive integers, e.g. 1,8,8" in err
