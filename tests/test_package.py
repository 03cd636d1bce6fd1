"""One package, one schedule identity, conversion at run time, errors: the redesign's promises."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import lazyflow
from lazyflow import LazyflowError, SamplingError, load_schedule, sample
from lazyflow.cli import main
from lazyflow.runtime import kernels
from lazyflow.runtime.core.integrators import INTEGRATORS

from exact import GMMVelocity

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64
MIXTURE = GMMVelocity(torch.tensor([0.6, 0.4], dtype=F64), torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64),
                      torch.tensor([0.2, 0.4], dtype=F64))


def run(*argv, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, env=env)


# --- the namespace ------------------------------------------------------------------------------------

def test_public_names():
    from lazyflow.derive import convert, derive, preset, solve_lazy, validate  # noqa: F401

    assert callable(lazyflow.sample) and callable(lazyflow.load_schedule)
    assert issubclass(SamplingError, LazyflowError) and issubclass(LazyflowError, ValueError)
    from lazyflow.derive import SpecError
    assert issubclass(SpecError, LazyflowError)


def test_python_dash_m_and_light_imports(tmp_path):
    """``python -m lazyflow`` is the command; importing lazyflow loads neither SymPy nor torch, and the
    runtime (and sampling with a shipped kernel) works without SymPy."""
    proc = run("-m", "lazyflow", "derive", "--schedule", "linear", "--json", cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["eps_star"] == "(1 - t)/t", proc.stderr
    code = ("import sys; import lazyflow; assert 'sympy' not in sys.modules and 'torch' not in sys.modules; "
            "sys.modules['sympy'] = None; import torch; from lazyflow import sample; "
            "x = sample(lambda x, t: -x, (3, 2), schedule='pointmass', steps=2); "
            "[lazyflow.runtime.kernels.load_shipped(n) for n in lazyflow.runtime.kernels.shipped()]; print('ok')")
    proc = run("-c", code, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.slow
def test_wheel_has_only_lazyflow_at_the_top(tmp_path):
    import shutil

    source = tmp_path / "src"   # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache", ".hypothesis"))
    proc = run("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source))
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("lazyflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"lazyflow", wheel.name.split("-py3")[0] + ".dist-info"}
    for needed in ("lazyflow/__main__.py", "lazyflow/cli.py", "lazyflow/derive/codegen.py", "lazyflow/derive/MATH.md",
                   "lazyflow/runtime/kernels/pointmass.py", "lazyflow/runtime/models/weights/digits.safetensors",
                   "lazyflow/figures/plots.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith("lazyflow/tests") or n.endswith(".png")]


# --- one schedule identity -------------------------------------------------------------------------

TOML = 'name = "mine"\nalpha = "cos(pi*t/2)**k"\nbeta = "sin(pi*t/2)"\nsigma = "ode"\n[params]\nk = {k}\n'


@pytest.mark.slow   # 11 s: one schedule through every entry point, each a process
def test_a_toml_schedule_is_the_same_schedule_everywhere(tmp_path, capsys):
    """derive, emit, sample, plot and the Python API resolve one TOML file to one schedule; editing the
    file changes the result (the cache is keyed by the parsed spec)."""
    path = tmp_path / "mine.toml"
    path.write_text(TOML.format(k=2))
    # derive: alpha as written
    assert main(["derive", "--schedule", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["alpha"] == "cos(pi*t/2)**2"
    # sample through the CLI and through Python: the same samples
    out = tmp_path / "x.npy"
    assert main(["sample", "--model", "digits", "--schedule", str(path), "--steps", "3", "--n", "4",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    from lazyflow.runtime import models
    net = models.load("digits")
    via_api = sample(net, (4, 1, 8, 8), schedule=str(path), steps=3)   # the CLI's defaults are sample()'s
    assert np.array_equal(np.load(out), via_api.numpy())
    # emit: the written kernel samples identically
    assert main(["emit", "--schedule", str(path), "--out-dir", str(tmp_path)]) == 0
    assert torch.equal(sample(net, (4, 1, 8, 8), schedule=str(tmp_path / "mine.py"), steps=3), via_api)
    # plot: the curve is the TOML's alpha
    from lazyflow.figures import plots
    fig = plots.plot_schedules([str(path)])
    line = fig.axes[0].get_lines()[0]
    ts = np.asarray(line.get_xdata())
    assert np.allclose(line.get_ydata(), np.cos(np.pi * ts / 2) ** 2)
    # edit the file: every route sees the new schedule
    path.write_text(TOML.format(k=1))
    edited = sample(net, (4, 1, 8, 8), schedule=str(path), steps=3, integrator="euler")
    assert not torch.allclose(edited, via_api)
    assert torch.equal(edited, sample(net, (4, 1, 8, 8), schedule="vp", steps=3, integrator="euler"))   # k = 1 is the VP schedule
    fig = plots.plot_schedules([str(path)])
    assert np.allclose(fig.axes[0].get_lines()[0].get_ydata(), np.cos(np.pi * ts / 2))


def test_expression_schedules_and_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAZYFLOW_CACHE", str(tmp_path / "cache"))
    spec = {"alpha": "1 - t**2", "beta": "t", "sigma": "ode", "name": "quad"}
    first = sample(MIXTURE, (5, 2), schedule=spec, steps=4, dtype=F64, integrator="euler")
    assert "generated the kernel of schedule 'quad'" in capsys.readouterr().err
    again = sample(MIXTURE, (5, 2), schedule=spec, steps=4, dtype=F64, integrator="euler")
    assert capsys.readouterr().err == ""          # the second use is a cache hit
    assert torch.equal(first, again)
    assert len(list((tmp_path / "cache" / "kernels").glob("quad_*.py"))) == 1


def test_a_shifted_source_needs_no_new_kernel(tmp_path, monkeypatch):
    """A linear-schedule model re-parametrised by hand to look trained on sd3 with shift = 1.7 samples to the
    same result as the model itself: the conversion is composed at run time from the sd3 kernel."""
    monkeypatch.setenv("LAZYFLOW_CACHE", str(tmp_path / "cache"))
    shift = 1.7

    def sd3_model(x, s):
        # sd3: alpha + beta = 1 and beta(s) = s / (shift - (shift - 1) s), so I^sd3_s = I^linear_beta(s)
        # and the sd3 velocity is beta'(s) v(x, beta(s))
        s = s.to(x.dtype)
        denom = shift - (shift - 1) * s
        tau, d_tau = s / denom, shift / denom**2
        return d_tau.reshape(-1, 1) * MIXTURE(x, tau)

    source = load_schedule("sd3", shift=shift)
    assert source.describe() == "sd3(shift=1.7)"
    for schedule, integrator in (("pointmass", "multistep-pc"), ("vp", "heun"), ("linear-sde", "exp-midpoint")):
        ours = sample(sd3_model, (32, 2), source=source, schedule=schedule, steps=6, integrator=integrator, dtype=F64)
        direct = sample(MIXTURE, (32, 2), source="linear", schedule=schedule, steps=6, integrator=integrator, dtype=F64)
        assert torch.allclose(ours, direct, atol=1e-10), (schedule, integrator)
    assert not (tmp_path / "cache").exists()
    # the wrong shift gives other samples: the parameter really is used
    wrong = sample(sd3_model, (32, 2), source=load_schedule("sd3", shift=3.0), schedule="pointmass", steps=6,
                   integrator="multistep-pc", dtype=F64)
    assert not torch.allclose(wrong, direct, atol=1e-3)


def test_schedule_parameters_are_checked():
    with pytest.raises(LazyflowError, match="has no parameter 'shfit'.*shift"):
        load_schedule("sd3", shfit=2)
    with pytest.raises(LazyflowError, match="finite number"):
        load_schedule("sd3", shift=float("nan"))
    with pytest.raises(LazyflowError, match=r"schedule sd3\(shift=-1\) is not valid"):
        load_schedule("sd3", shift=-1.0)
    assert load_schedule("sd3", shift=2) == load_schedule("sd3").with_params(shift=2.0)


def test_every_preset_resolves_by_name_and_by_file():
    for module in kernels.shipped():
        by_name = load_schedule(module.replace("_", "-"))
        by_file = load_schedule(str(ROOT / "runtime" / "kernels" / f"{module}.py"))
        t = torch.linspace(0, 1, 11, dtype=F64)
        assert torch.equal(by_name.values(t).alpha, by_file.values(t).alpha)
        assert by_name.name == by_file.name


def test_the_kernel_contract_is_checked_with_the_list(tmp_path):
    good = (ROOT / "runtime" / "kernels" / "vp.py").read_text()
    broken = tmp_path / "broken.py"
    broken.write_text(good.replace("def log_snr(", "def log_snr_renamed(").replace("STOCHASTIC = False",
                                                                                    "STOCHASTIC = 'no'"))
    with pytest.raises(kernels.KernelError, match=r"STOCHASTIC is str, not bool; missing log_snr"):
        load_schedule(str(broken))
    not_a_kernel = tmp_path / "plain.py"
    not_a_kernel.write_text("x = 1\n")
    with pytest.raises(kernels.KernelError, match="missing FORMAT; missing NAME"):
        load_schedule(str(not_a_kernel))


# --- the integrator registry ------------------------------------------------------------------------

def test_the_cli_offers_what_the_registry_holds(capsys):
    from lazyflow.parsers import build_parser

    sample_parser = build_parser()._subparsers._group_actions[0].choices["sample"]
    action = next(a for a in sample_parser._actions if a.dest == "integrator")
    assert list(action.choices) == list(INTEGRATORS)
    assert all(name in action.help for name in INTEGRATORS)
    with pytest.raises(SystemExit):
        main(["sample", "--integrator", "rk4", "--out", "x.npy"])
    assert "invalid choice: 'rk4'" in capsys.readouterr().err


def test_every_integrator_declares_itself():
    for name, integrator in INTEGRATORS.items():
        assert integrator.name == name and integrator.order in (1, 2, 3) and integrator.calls_per_step in (1, 2)
        assert integrator.description


# --- errors -------------------------------------------------------------------------------------

def test_refusals_are_one_line_and_bugs_raise(monkeypatch, capsys):
    assert main(["sample", "--device", "cuda:7", "--n", "2", "--steps", "1", "--out", "x.npy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cuda" in err
    import lazyflow.cli as cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "run_derive", broken)
    with pytest.raises(KeyError):
        main(["derive", "--schedule", "linear"])


def test_a_model_is_called_in_its_own_dtype():
    """A float32 module under a float64 run: the model gets float32 inputs, the state stays float64."""
    from lazyflow.runtime.models import VelocityMLP

    net = VelocityMLP((2,), width=8, depth=1, time_freqs=1)
    x = sample(net, (2, 2), dtype="float64", schedule="pointmass", integrator="euler")
    assert x.dtype == torch.float64
    with pytest.raises(LazyflowError, match="unknown dtype 'float65'"):
        sample(net, (2, 2), dtype="float65", schedule="pointmass", integrator="euler")


# --- nothing is written into the package ---------------------------------------------------------

def test_emit_writes_where_told_and_never_overwrites(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["emit", "--schedule", "linear"]) == 0
    assert (tmp_path / "linear.py").is_file()
    assert main(["emit", "--schedule", "linear"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["emit", "--schedule", "linear", "--force"]) == 0


def test_train_writes_to_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shipped = (ROOT / "runtime" / "models" / "weights" / "moons.safetensors").read_bytes()
    assert main(["train", "moons", "--steps", "2"]) == 0
    assert (tmp_path / "moons.safetensors").is_file() and (tmp_path / "moons.json").is_file()
    assert (ROOT / "runtime" / "models" / "weights" / "moons.safetensors").read_bytes() == shipped


def test_the_diffusers_alias_is_inert_until_used():
    """``lazyflow.diffusers`` names ``lazyflow.runtime.integrations.diffusers``; tools that scan sys.modules for dunder
    attributes (inspect, pickle) must not import it (nor diffusers)."""
    alias = sys.modules["lazyflow.diffusers"]
    assert not hasattr(alias, "__file__")
    assert "lazyflow.runtime.integrations.diffusers" not in sys.modules or hasattr(alias, "LazyFlowScheduler")
