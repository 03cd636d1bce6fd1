"""No tracebacks for user errors, shown by fuzzing: Hypothesis draws argument lists for every subcommand (valid
and invalid flags and values, paths, files with bad contents) and runs ``main()`` in-process.  Every run must
exit 0 or 2; a refusal (2) is one line on stderr (argparse's own included); no run may take long (a watchdog
alarm).  The heavy work of train, bench, bench-overhead and tune-grid is replaced by a stub that stops the run
once the command line has been accepted (their flags are still parsed and checked by the shell); every other
command runs for real on tiny sizes (n <= 4, steps <= 4)."""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import signal

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from lazyflow.cli import main  # noqa: E402

#: notes that a successful or refused run may print before its one line (not errors)
NOTES = ("lazyflow: generated the kernel", "lazyflow: regenerated the", "lazyflow: the kernel cache")
WATCHDOG_S = 60


class Reached(Exception):
    """Raised by the stubs of the heavy commands: the command line was accepted and the work would start."""


def _stub(*args, **kwargs):
    raise Reached


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths with bad (and a few good) contents, by name."""
    root = tmp_path_factory.mktemp("fuzz")
    junk = bytes(range(256)) * 4
    made = {
        "empty.json": b"", "binary.json": junk, "list.json": b"[1, 2]", "object.json": b'{"a": 1}',
        "short-grid.json": json.dumps({"format": "lazyflow-grid/1", "times": [0, 0.5], "schedule": "linear"}).encode(),
        "grid.json": json.dumps({"format": "lazyflow-grid/1", "times": [0, 0.5, 1], "schedule": "linear"}).encode(),
        "empty.toml": b"", "binary.toml": junk, "bad.toml": b"alpha = \n", "keys.toml": b'alpha = "1 - t"\n',
        "empty.py": b"", "binary.py": junk, "raises.py": b"raise RuntimeError('boom')\n", "syntax.py": b"def (:\n",
        "empty.safetensors": b"", "binary.safetensors": junk, "empty.npy": b"", "binary.npy": junk,
        "empty.pt": b"", "binary.pt": junk, "text.npy": b"1 2 3\n",
    }
    for name, data in made.items():
        (root / name).write_bytes(data)
    import numpy as np
    import torch
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(3)}, str(root / "wrong.safetensors"))
    np.save(root / "good.npy", np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype("float32"))
    np.save(root / "strings.npy", np.array(["a", "b"]))
    torch.save({"not": "a tensor"}, root / "dict.pt")
    (root / "folder").mkdir()
    paths = {name: str(root / name) for name in [*made, "wrong.safetensors", "good.npy", "strings.npy", "dict.pt",
                                                 "folder"]}
    paths["missing.json"] = str(root / "missing.json")
    paths["root"] = str(root)
    return paths


def _values(files: dict) -> dict[str, list[str]]:
    """Value pools by kind of flag."""
    paths = [p for k, p in files.items() if k != "root"]
    return {
        "number": ["0", "1", "2", "-1", "0.5", "nan", "inf", "-inf", "1e400", "x", "", "18446744073709551616"],
        "small": ["1", "2", "3", "4", "0", "-1", "x", "2.5", ""],
        "expr": ["1 - t", "t", "cos(pi*t/2)", "sin(pi*t/2)", "__import__('os')", "t**", "exp(t)", "k*t", "-t+1",
                 "1/t", "sqrt(t)", "", "optimal", "ode", "lazy", "0"],
        "schedule": ["linear", "vp", "pointmass", "sd3", "linear-sde", "nope", "", "../x"] + paths,
        "param": ["shift=1.7", "shift=-1", "shift=x", "k=2", "=", "x", "shift="],
        "model": ["digits", "gmm:1", "gmm:x", "nope", "sit-xl/2"] + paths,
        "grid": ["uniform", "logsnr", "edm", "source", "0,0.5,1", "0,0.5", "0,1,0.5", "logsnr:-2,2", "logsnr:1",
                 "logsnr-open:-2,2", "x,y", "nope"] + paths,
        "integrator": ["euler", "multistep-pc", "heun", "exponential", "data-euler", "nope"],
        "device": ["cpu", "cuda", "cuda:7", "mps", "meta", "lazy", "xla", "cpu:0", "", "nope"],
        "out": ["{out}.npy", "{out}.png", "{out}.pt", "{out}.txt", "{out}", "{out}/deep/x.npy"] + paths,
        "path": paths,
    }


# flag -> kind of value (None: a switch); each command also has a base argument list that runs cheaply
COMMANDS = {
    "derive": (["derive", "--schedule", "linear"], {"--schedule": "schedule", "--alpha": "expr", "--beta": "expr",
                                                    "--sigma": "expr", "--param": "param", "--data-var": "number",
                                                    "--name": "expr", "--json": None, "--latex": None}),
    "lazy": (["lazy", "--beta", "t", "--sigma", "optimal"], {"--alpha": "expr", "--beta": "expr", "--sigma": "expr",
                                                             "--data-var": "number", "--data-mean": "expr",
                                                             "--json": None}),
    "convert": (["convert", "--source", "linear", "--target", "vp"], {"--source": "schedule", "--target": "schedule",
                                                                      "--alpha": "expr", "--beta": "expr",
                                                                      "--param": "param", "--json": None}),
    "emit": (["emit", "--schedule", "vp", "--out-dir", "{out}"], {"--schedule": "schedule", "--alpha": "expr",
                                                                  "--beta": "expr", "--sigma": "expr",
                                                                  "--name": "expr", "--out-dir": "out",
                                                                  "--force": None}),
    "sample": (["sample", "--steps", "2", "--n", "2", "--out", "{out}.npy"], {
        "--model": "model", "--schedule": "schedule", "--alpha": "expr", "--beta": "expr", "--sigma": "expr",
        "--param": "param", "--integrator": "integrator", "--final-step": "expr", "--diffusion-scale": "number",
        "--prediction": "expr", "--source": "schedule", "--source-param": "param", "--steps": "small",
        "--grid": "grid", "--shape": "grid", "--data-stats": "path", "--n": "small", "--seed": "number",
        "--batch-size": "small", "--device": "device", "--out": "out", "--class-labels": "grid", "--prompt-embeds": "path",
        "--guidance": "number", "--guidance-interval": "grid", "--model-kind": "expr", "--model-param": "param"}),
    "train": (["train", "digits", "--out-dir", "{out}"], {"--steps": "number", "--out-dir": "out"}),
    "bench": (["bench", "--n", "10", "--nfe", "2", "--quick", "--no-peers"], {
        "--model": "model", "--nfe": "grid", "--n": "number", "--metric": "expr", "--seed": "number",
        "--grid-file": "path", "--schedule": "schedule", "--alpha": "expr", "--beta": "expr", "--save": "out",
        "--plot": "out", "--prediction": "expr", "--json": None, "--markdown": None}),
    "tune-grid": (["tune-grid", "--nfe", "2", "--out", "{out}.json"], {
        "--model": "model", "--nfe": "small", "--schedule": "schedule", "--integrator": "integrator",
        "--init": "grid", "--samples": "small", "--seed": "number", "--out": "out", "--alpha": "expr",
        "--beta": "expr"}),
    "bench-overhead": (["bench-overhead", "--steps", "2"], {"--device": "device", "--steps": "small",
                                                           "--models": "expr", "--batches": "grid",
                                                           "--repeats": "small", "--modes": "expr"}),
    "plot": (["plot", "drift", "--steps", "2", "--out", "{out}.png"], {
        "--schedules": "schedule", "--schedule": "schedule", "--alpha": "expr", "--beta": "expr",
        "--sigma": "expr", "--steps": "small", "--out": "out"}),
    "plot-bench": (["plot", "bench", "--from", "{path}", "--out", "{out}.png"], {"--from": "path", "--out": "out"}),
    "stats": (["stats", "--from", "{path}", "--out", "{out}.safetensors"], {
        "--from": "path", "--kind": "expr", "--rank": "small", "--floor": "number", "--out": "out",
        "--force": None, "--packed": None, "--grid": "expr"}),
    "comfyui-node": (["comfyui-node", "{out}"], {"--force": None}),
    "stats-model": (["stats", "--from-model", "digits", "--n", "4", "--steps", "2", "--out", "{out}.safetensors"], {
        "--from-model": "model", "--n": "small", "--steps": "small", "--integrator": "integrator",
        "--seed": "number", "--kind": "expr", "--out": "out", "--device": "device", "--schedule": "schedule",
        "--alpha": "expr", "--beta": "expr"}),
}
HEAVY = {"train": ("lazyflow.runtime.models.train", "train"),
         "bench": ("lazyflow.runtime.evaluation.bench", "run_quality_bench"),
         "tune-grid": ("lazyflow.runtime.evaluation.tune", "tune_grid_file"),
         "bench-overhead": ("lazyflow.runtime.evaluation.overhead", "measure_overhead")}
_COUNT = itertools.count()


@st.composite
def argument_lists(draw, files: dict) -> tuple[str, list[str]]:
    """A command and its arguments: the cheap base list, then 0-4 flags with drawn values, or a junk word."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    base, flags = COMMANDS[command]
    pools = _values(files)
    argv = list(base)
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 9)) == 0:
            argv.append(draw(st.sampled_from(["--nope", "-x", "extra", "--", "--help=x"])))
            continue
        flag = draw(st.sampled_from(sorted(flags)))
        kind = flags[flag]
        argv += [flag] if kind is None else [flag, draw(st.sampled_from(pools[kind]))]
    out = os.path.join(files["root"], f"out{next(_COUNT)}")
    path = draw(st.sampled_from(pools["path"]))
    return command, [a.replace("{out}", out).replace("{path}", path) for a in argv]


def run_main(argv: list[str]) -> tuple[int, str]:
    """main(argv) in-process: (exit status, stderr), SystemExit and the heavy stubs' Reached included."""
    err, out = io.StringIO(), io.StringIO()

    def alarm(*_):
        raise TimeoutError(f"lazyflow {' '.join(argv)} ran past {WATCHDOG_S} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(WATCHDOG_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
            except Reached:
                code = 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue()


def check(argv: list[str], code: int, stderr: str) -> None:
    assert code in (0, 2), (argv, code, stderr)
    assert "Traceback" not in stderr, (argv, stderr)
    if code == 2:
        lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(NOTES)]
        assert len(lines) == 1 and "error:" in lines[0], (argv, stderr)


def _fuzz(files, monkeypatch, data) -> None:
    from importlib import import_module

    for module, name in HEAVY.values():
        monkeypatch.setattr(import_module(module), name, _stub)
    command, argv = data.draw(argument_lists(files))
    code, stderr = run_main(argv)
    check(argv, code, stderr)


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@pytest.mark.slow   # 3-8 s of generated command lines (the long variant is slow too)
@given(data=st.data())
def test_no_traceback_for_user_errors(files, monkeypatch, data, one_torch_thread):
    _fuzz(files, monkeypatch, data)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_traceback_for_user_errors_long(files, monkeypatch, data, one_torch_thread):
    _fuzz(files, monkeypatch, data)


@pytest.mark.parametrize("argv", [
    ["sample", "--n", "x", "--out", "x.npy"], ["nope"], [], ["plot", "drift"], ["derive", "--schedule", "linear",
                                                                                "--json", "--latex"],
])
def test_argparse_refusals_are_one_line(argv):
    code, stderr = run_main(argv)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "--help lists the flags" in stderr, stderr


def test_every_subcommand_is_fuzzed():
    from lazyflow.parsers import build_parser

    names = build_parser()._subparsers._group_actions[0].choices
    assert set(names) <= {base[0] for base, _ in COMMANDS.values()}, sorted(names)


def test_version(capsys):
    import lazyflow

    code, _ = run_main(["--version"])
    assert code == 0
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"lazyflow {lazyflow.__version__}"
