"""The embedded digits model, its quality measure, and the sample/bench/train commands."""
import json

import numpy as np
import pytest
import torch

from lazyflow import sample
from lazyflow.runtime import models
from lazyflow.runtime.models import data
from lazyflow.runtime.evaluation.bench import our_methods, run_quality_bench
from lazyflow.cli import main
from lazyflow.runtime.evaluation.metrics import digits_fd, frechet_distance

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)


@pytest.fixture(scope="module")
def digits_model():
    return models.load("digits")


def test_embedded_model_loads_offline(digits_model):
    assert digits_model.data_shape == (1, 8, 8)
    assert digits_model.metadata["schedule"] == "linear" and digits_model.metadata["prediction"] == "velocity"
    assert sum(p.numel() for p in digits_model.parameters()) * 4 < 4 * 2**20   # a few MB


def test_classifier_accuracy_is_what_its_card_says():
    classifier = models.load_classifier()
    images, labels = data.digits(), data.digits_labels()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    test = order[int(0.8 * len(images)):]
    with torch.no_grad():
        accuracy = (classifier(images[test]).argmax(1) == labels[test]).float().mean().item()
    assert accuracy == pytest.approx(classifier.metadata["test_accuracy"], abs=1e-4)
    assert accuracy > 0.95


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    cov1 = a @ a.T + np.eye(4)
    assert frechet_distance(np.zeros(4), cov1, np.zeros(4), cov1) == pytest.approx(0, abs=1e-8)
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]])) == pytest.approx(2.0)


@pytest.mark.slow   # 2-5 s
def test_quality_measure_separates_data_from_noise_and_is_deterministic(digits_model):
    images = data.digits()
    assert digits_fd(images) == pytest.approx(0, abs=1e-6)
    noise_fd = digits_fd(torch.randn(500, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    good = sample(digits_model, (500, 1, 8, 8), schedule="linear", steps=60, integrator="heun", seed=0)
    first, again = digits_fd(good), digits_fd(sample(digits_model, (500, 1, 8, 8), schedule="linear", steps=60,
                                                     integrator="heun", seed=0))
    assert first == again
    rough = digits_fd(sample(digits_model, (500, 1, 8, 8), schedule="linear", steps=2, seed=0, integrator="euler"))
    assert first < rough < noise_fd
    assert first < 6.0   # close to the data: the 60-step solve is within the two-halves floor (about 4.6)
    with pytest.raises(ValueError, match="NaN"):
        digits_fd(torch.full((4, 1, 8, 8), float("nan")))


@pytest.mark.slow   # 2-5 s: a sample per bench method
def test_sample_command_for_every_bench_method(tmp_path, capsys):
    for method in our_methods(full=True):
        out = tmp_path / "x.npy"
        argv = ["sample", "--model", "digits", "--schedule", method.schedule, "--steps", "3", "--integrator",
                method.integrator, "--grid", method.grid, "--n", "4", "--out", str(out), "--force"]
        if method.final_step:
            argv += ["--final-step", method.final_step]
        assert main(argv) == 0, method
        samples = np.load(out)
        assert samples.shape == (4, 1, 8, 8) and np.isfinite(samples).all()
    png = tmp_path / "grid.png"
    assert main(["sample", "--model", "digits", "--steps", "4", "--n", "9", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sample_command_refuses_bad_input(capsys):
    assert main(["sample", "--model", "nope", "--out", "x.npy"]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    assert main(["sample", "--steps", "0", "--out", "x.npy"]) == 2
    assert "steps must be an integer >= 1" in capsys.readouterr().err
    assert main(["sample", "--out", "x.txt", "--n", "2", "--steps", "1"]) == 2
    assert "--out must end in .npy, .png or .pt" in capsys.readouterr().err


@pytest.mark.slow   # a whole bench on digits (8 s); CI's slow pass runs it
def test_bench_rows_count_real_evaluations():
    result = run_quality_bench("digits", [2, 4], n=100, seed=0, include_peers=False, full=False, log=lambda *a: None)
    rows = result["rows"]
    assert {"method", "peer", "stochastic", "nfe", "fd"} <= set(rows[0])
    heun = [r for r in rows if r["method"] == "linear/heun/uniform"]
    assert [r["nfe"] for r in heun] == [1, 3]
    midpoint = [r for r in rows if r["method"] == "pointmass/midpoint/uniform"]
    assert [r["nfe"] for r in midpoint] == [2, 4] and all(r["stochastic"] for r in midpoint)
    assert json.loads(json.dumps(result))["reference"]["nfe"] == 499


def test_training_is_deterministic(tmp_path):
    from lazyflow.runtime.models.train import train_flow

    points = data.digits()[:64]
    first = train_flow(points, steps=5, batch=8, lr=1e-3, width=16, depth=2, time_freqs=2, ema=0.9, seed=3,
                       progress=False)
    second = train_flow(points, steps=5, batch=8, lr=1e-3, width=16, depth=2, time_freqs=2, ema=0.9, seed=3,
                        progress=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    path = models.save(first, tmp_path / "tiny.safetensors", {"schedule": "linear"})
    loaded = models.load(str(path))
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    assert torch.equal(loaded(x, t), first(x, t))


@pytest.mark.parametrize("argv, fragment", [
    (["sample", "--shape", "3,32,32", "--n", "2", "--out", "x.npy"], "its samples have shape (1, 8, 8)"),
    (["sample", "--out", "x.jpg"], "--out must end in .npy, .png or .pt"),
    (["sample", "--n", "0", "--out", "x.npy"], "--num-samples must be >= 1"),
    (["bench", "--n", "1"], "--n must be at least 10"),
    (["bench", "--model", "moons", "--n", "20"], "the bench measures digits models"),
    (["plot", "bench", "--from", "missing.json", "--out", "q.png"], "cannot read a bench result"),
    (["plot", "schedules", "--out", "noext"], "--out must be a .png file"),
])
def test_refused_before_any_work(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


