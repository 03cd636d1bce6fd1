"""A model kind registered from this file alone runs through ``lazyflow sample``, the bench's listing of
models and the bench itself, with no other file changed; the registry's lookups and refusals."""
import json

import numpy as np
import pytest
import torch

from lazyflow.cli import main
from lazyflow.errors import LazyflowError
from lazyflow.runtime.models.kind import LoadedModel, ModelKind
from lazyflow.runtime.models.registry import (MODEL_KINDS, load_model, model_kind, model_kind_for, register_model_kind,
                                              unregister_model_kind)

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

MEAN = (2.0, -1.0, 0.5)


class ExactGaussian(torch.nn.Module):
    """Data X ~ N(MEAN, I) in shape (3,) on the linear schedule I_t = (1 - t) Z + t X: the exact velocity
    E[X - Z | I_t = x] = m + (2t - 1)(x - t m) / ((1 - t)^2 + t^2)."""

    data_shape = (3,)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(MEAN, dtype=x.dtype, device=x.device)
        t = t.to(x.dtype).reshape(-1, 1)
        return m + (2 * t - 1) * (x - t * m) / ((1 - t) ** 2 + t**2)


class GaussianScorer:
    """fd: the Fréchet distance between the samples' Gaussian fit and N(MEAN, I)."""

    metrics = ("fd",)

    def score(self, samples: torch.Tensor) -> dict[str, float]:
        x = samples.double().reshape(len(samples), -1)
        mean, cov = x.mean(0), torch.cov(x.T)
        root = torch.linalg.eigvalsh(cov).clamp(min=0).sqrt().sum()   # tr sqrt(cov), since the target is I
        fd = ((mean - torch.tensor(MEAN, dtype=torch.float64)) ** 2).sum() + cov.trace() + 3 - 2 * root
        return {"fd": float(fd)}

    def floors(self, n: int, seed: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(seed)
        return self.score(torch.tensor(MEAN) + torch.randn(n, 3, generator=g))

    def describe(self) -> str:
        return "fd: Fréchet distance to N(MEAN, I)"


def load_gaussian(name: str, *, device: torch.device, num_samples: int) -> LoadedModel:
    return LoadedModel(kind=name, model=ExactGaussian().to(device), data_shape=(3,), source="linear",
                       prediction="velocity", metadata={"exact": True})


@pytest.fixture
def gauss3():
    """The kind ``gauss3``, registered for one test and removed after it."""
    kind = register_model_kind(ModelKind(name="gauss3", description="an exact Gaussian N(m, I) in 3D (a test)",
                                         load=load_gaussian, exact=True, scorer=lambda loaded, n: GaussianScorer(),
                                         metrics=("fd",)))
    yield kind
    unregister_model_kind("gauss3")
    assert "gauss3" not in MODEL_KINDS


def test_a_registered_kind_samples_through_the_command_line(gauss3, tmp_path, capsys):
    out = tmp_path / "g.npy"
    assert main(["sample", "--model", "gauss3", "--schedule", "linear", "--integrator", "heun", "--steps", "16",
                 "--n", "4000", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    x = np.load(out)
    assert x.shape == (4000, 3)
    assert np.allclose(x.mean(0), MEAN, atol=0.1) and np.allclose(x.std(0), 1, atol=0.1)
    assert main(["sample", "--model", "gauss3", "--guidance", "2", "--out", str(tmp_path / "h.npy")]) == 2
    assert "--guidance need --model-kind" in capsys.readouterr().err    # the kind takes no options
    assert load_model("gauss3").data_shape == (3,)


@pytest.mark.slow   # 1-4 s: a bench run
def test_a_registered_kind_is_in_the_benchs_listing_and_runs_there(gauss3, tmp_path, capsys):
    from lazyflow.runtime.evaluation.bench import bench_models

    assert "gauss3" in bench_models()
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "gauss3" in capsys.readouterr().out
    saved = tmp_path / "bench.json"
    assert main(["bench", "--model", "gauss3", "--nfe", "8", "--n", "200", "--no-peers", "--quick",
                 "--save", str(saved)]) == 0
    assert "fd (gauss3, prediction velocity)" in capsys.readouterr().out
    result = json.loads(saved.read_text())
    heun = next(r for r in result["rows"] if r["method"] == "linear/heun/uniform")
    assert heun["nfe"] <= 8 and heun["fd"] < 0.2 and result["floors"]["fd"]["sets"] == 5
    assert main(["bench", "--model", "gauss3", "--metric", "sw", "--n", "20"]) == 2
    assert "the metrics of 'gauss3' are fd" in capsys.readouterr().err


def test_the_registry_resolves_names_files_and_kinds(tmp_path):
    assert model_kind_for("digits").name == "digits" and model_kind_for("gmm64").exact
    assert model_kind("SiT-XL-2").name == "sit-xl/2"          # case and separators ignored
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"")
    assert model_kind_for(str(path)).name == "file"
    with pytest.raises(LazyflowError, match="no model 'nope'"):
        model_kind_for("nope")
    with pytest.raises(LazyflowError, match="unknown model kind 'sit-xxl/2'"):
        model_kind_for(str(path), "sit-xxl/2")
    with pytest.raises(LazyflowError, match="is a model name"):
        model_kind_for("digits", "digits")
    with pytest.raises(LazyflowError, match="registered already"):
        register_model_kind(MODEL_KINDS["digits"])


def test_a_model_runs_on_the_asked_source_and_prediction():
    """An exact mixture answers on them; a trained model keeps its network and is read so."""
    exact = load_model("gmm64", source="vp", prediction="x")
    assert exact.model.prediction == "x" and exact.model.source.name == "vp" and exact.prediction == "x"
    trained = load_model("digits", prediction="x")
    assert trained.prediction == "x" and trained.source.name == "linear" and trained.data_shape == (1, 8, 8)


def test_a_kind_with_an_argument_is_named_NAME_colon_ARGUMENT():
    """``gauss:M`` loads a Gaussian with mean M in every coordinate: the loader gets the whole name."""
    def load(spec: str, *, device: torch.device, num_samples: int) -> LoadedModel:
        return LoadedModel(kind="gaussm", model=ExactGaussian(), data_shape=(3,), metadata={"spec": spec})

    register_model_kind(ModelKind(name="gaussm", argument="M", description="a test", load=load))
    try:
        assert model_kind_for("gaussm:2.5").name == "gaussm" and load_model("gaussm:2.5").metadata["spec"] == "gaussm:2.5"
        with pytest.raises(LazyflowError, match="takes an argument: --model gaussm:M"):
            model_kind_for("gaussm")
        assert model_kind_for("gmm:7").name == "gmm" and load_model("gmm:7", dim=4).data_shape == (4,)
    finally:
        unregister_model_kind("gaussm")
