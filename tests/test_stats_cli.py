"""``lazyflow stats``: the data statistics of the data-frame integrators written from data or from a model's own
samples, the file ``sample --data-stats`` reads, and one-line refusals."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lazyflow.cli import main
from lazyflow.runtime.core.data_stats import DataStats

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

ROOT = Path(__file__).resolve().parent.parent


def data(n: int = 200, shape: tuple[int, ...] = (2, 3, 3), seed: int = 0) -> torch.Tensor:
    """Correlated samples (n, *shape) with a mean, in float64."""
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + 0.3).reshape(n, *shape)


def assert_same(a: DataStats, b: DataStats) -> None:
    assert (a.kind, a.samples, a.floor, a.data_shape) == (b.kind, b.samples, b.floor, b.data_shape)
    for name in ("mean", "var", "basis", "rest"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def refused(capsys, argv: list[str], fragment: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    assert err.count("\n") == 1 and err.startswith("lazyflow stats: error: ")


@pytest.mark.parametrize("kind, extra", [("scalar", []), ("diag", []), ("channel", []), ("lowrank", ["--rank", "3"]),
                                         ("full", [])])
def test_from_a_npy_file_is_from_samples_on_the_same_data(tmp_path, capsys, kind, extra):
    x = data()
    np.save(tmp_path / "data.npy", x.numpy())
    out = tmp_path / "stats.safetensors"
    assert main(["stats", "--from", str(tmp_path / "data.npy"), "--kind", kind, *extra, "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"wrote {out} ({kind} statistics of shape (2, 3, 3){', rank 3' if extra else ''} from 200 " \
                   f"samples of {tmp_path / 'data.npy'})"
    assert_same(DataStats.load(out), DataStats.from_samples(x, kind=kind, rank=3 if extra else None))


def test_from_a_pt_file_with_a_floor(tmp_path, capsys):
    x = data(shape=(5,)).float()
    torch.save(x, tmp_path / "data.pt")
    out = tmp_path / "stats.safetensors"
    assert main(["stats", "--from", str(tmp_path / "data.pt"), "--kind", "full", "--floor", "0.01",
                 "--out", str(out)]) == 0
    assert "full statistics of shape (5,) from 200 samples" in capsys.readouterr().out
    assert_same(DataStats.load(out), DataStats.from_samples(x, kind="full", floor=0.01))


def test_from_the_model_costs_its_network_calls_and_is_stats_from_model(tmp_path, capsys):
    from lazyflow import stats_from_model
    from lazyflow.runtime.models.registry import load_model

    out = tmp_path / "stats.safetensors"
    assert main(["stats", "--from-model", "digits", "--n", "64", "--steps", "4", "--kind", "full",
                 "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out} (full statistics of shape (1, 8, 8) from 64 samples of digits: 4 steps of "
                           "multistep-pc, 256 network evaluations in 4 calls, ")
    loaded = load_model("digits")
    expected = stats_from_model(loaded.model, (64, 1, 8, 8), kind="full", steps=4, integrator="multistep-pc",
                                source=loaded.source, prediction=loaded.prediction)
    torch.testing.assert_close(DataStats.load(out).mean, expected.mean)
    torch.testing.assert_close(DataStats.load(out).var, expected.var)


def test_sample_runs_a_data_frame_integrator_on_a_file_stats_wrote(tmp_path, capsys):
    stats = tmp_path / "stats.safetensors"
    assert main(["stats", "--from-model", "digits", "--n", "256", "--steps", "8", "--kind", "full",
                 "--out", str(stats)]) == 0
    capsys.readouterr()
    out = tmp_path / "x.npy"
    assert main(["sample", "--model", "digits", "--schedule", "linear", "--integrator", "data-multistep-pc",
                 "--data-stats", str(stats), "--steps", "5", "--out", str(out)]) == 0
    assert "5 steps, data-multistep-pc" in capsys.readouterr().out
    x = np.load(out)
    assert x.shape == (64, 1, 8, 8) and np.isfinite(x).all()


def test_an_existing_out_needs_force(tmp_path, capsys):
    np.save(tmp_path / "data.npy", data().numpy())
    out = tmp_path / "stats.safetensors"
    out.write_text("mine")
    argv = ["stats", "--from", str(tmp_path / "data.npy"), "--out", str(out)]
    refused(capsys, argv, "exists; pass --force")
    assert out.read_text() == "mine"
    assert main([*argv, "--force"]) == 0
    assert DataStats.load(out).kind == "diag"


def test_refusals_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "stats.safetensors")
    np.save(tmp_path / "flat.npy", np.zeros(10))
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    torch.save({"x": torch.zeros(4, 2)}, tmp_path / "dict.pt")
    np.save(tmp_path / "data.npy", data().numpy())
    good = str(tmp_path / "data.npy")
    for argv, fragment in [
        (["--from", str(tmp_path / "missing.npy")], "no such file"),
        (["--from", str(tmp_path / "junk.npy")], "cannot read it"),
        (["--from", str(tmp_path / "dict.pt")], "holds dict, not an array"),
        (["--from", str(tmp_path / "data.csv")], "need a .npy or .pt file"),
        (["--from", str(tmp_path / "flat.npy")], "shape (n, *data_shape)"),
        (["--from", good, "--kind", "cubic"], "unknown --kind 'cubic'; choose one of scalar, diag"),
        (["--from", good, "--kind", "lowrank"], "--kind lowrank needs --rank"),
        (["--from", good, "--rank", "2"], "--rank is for --kind lowrank"),
        (["--from", good, "--kind", "lowrank", "--rank", "500"], "rank in 1..18"),
        (["--from", good, "--steps", "4", "--n", "9"], "--n, --steps: settings of --from-model, not of --from"),
        (["--from-model", "nope"], "no model 'nope'"),
    ]:
        refused(capsys, ["stats", *argv, "--out", out], fragment)
    refused(capsys, ["stats", "--from", good, "--out", str(tmp_path / "stats.npy")], "must end in .safetensors")
    assert not Path(out).exists()


@pytest.mark.slow   # 2-6 s: shell processes
def test_a_refusal_from_the_shell_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lazyflow", "stats", "--from", str(tmp_path / "none.npy"),
                           "--out", str(tmp_path / "s.safetensors")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_one_source_is_needed(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stats", "--out", "s.safetensors"])
    assert exit_.value.code == 2
    assert "one of the arguments --from --from-model is required" in capsys.readouterr().err


def test_from_a_model_file_of_any_kind(tmp_path, capsys):
    """--model-kind loads the model as sample does (a TorchScript file here; the conditional and SiT kinds with
    their labels and guidance in tests/test_conditional_integrations.py)."""
    from lazyflow.runtime.models import embedded

    path = tmp_path / "digits.pt"
    torch.jit.save(torch.jit.script(embedded.load("digits")), str(path))
    out = tmp_path / "s.safetensors"
    assert main(["stats", "--from-model", str(path), "--model-kind", "torchscript", "--n", "20", "--steps", "3",
                 "--out", str(out)]) == 0
    assert DataStats.load(out).data_shape == (1, 8, 8) and "3 steps of multistep-pc" in capsys.readouterr().out
    assert main(["stats", "--from", str(path), "--model-kind", "torchscript", "--out", str(out), "--force"]) == 2
    assert "--model-kind: settings of --from-model" in capsys.readouterr().err


def test_a_model_file_without_its_data_shape_takes_shape(tmp_path, capsys):
    """A traced TorchScript file records no data_shape: refused naming --shape, then run with it (the
    statistics are of that shape, from the digits model's samples: means near the digits' own)."""
    from lazyflow.runtime.models import embedded

    net = embedded.load("digits").eval()
    path, out = tmp_path / "traced.pt", tmp_path / "s.safetensors"
    torch.jit.save(torch.jit.trace(net, (torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5))), str(path))
    argv = ["stats", "--from-model", str(path), "--model-kind", "torchscript", "--n", "20", "--steps", "3",
            "--out", str(out)]
    refused(capsys, argv, "the model does not record its data shape: give --shape")
    assert main([*argv, "--shape", "1,8,8"]) == 0
    assert DataStats.load(out).data_shape == (1, 8, 8)
