"""Resource bounds before work (runtime/core/limits.py): too many steps or too much memory is one line naming the
limit and its override, refused before any table is built; the overrides work; ordinary runs pass."""
import time

import pytest
import torch

from lazyflow.cli import main
from lazyflow.errors import LazyflowError
from lazyflow.runtime.core import limits
from lazyflow.runtime.core.sampler import sample
from lazyflow.runtime.models import gmm

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)


@pytest.fixture
def model():
    return gmm.load_random("gmm:101")


def test_too_many_steps_is_refused_at_once_with_its_override(model, monkeypatch, capsys):
    start = time.perf_counter()
    with pytest.raises(LazyflowError, match="100,000,000 steps is more than the limit of 100,000.*LAZYFLOW_MAX_STEPS"):
        sample(model, (2, *model.data_shape), steps=100_000_000)
    assert main(["sample", "--model", "digits", "--steps", "100000000", "--out", "never.npy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LAZYFLOW_MAX_STEPS" in err
    assert time.perf_counter() - start < 5          # refused before the tables (gigabytes) are built
    monkeypatch.setenv("LAZYFLOW_MAX_STEPS", "10")
    with pytest.raises(LazyflowError, match="11 steps is more than the limit of 10"):
        sample(model, (2, *model.data_shape), steps=11)
    monkeypatch.setenv("LAZYFLOW_MAX_STEPS", "ten")
    with pytest.raises(LazyflowError, match="LAZYFLOW_MAX_STEPS='ten' is not a number"):
        sample(model, (2, *model.data_shape), steps=2)


def test_a_run_larger_than_the_memory_is_refused_and_the_override_is_the_budget(model, monkeypatch):
    available = limits.available_memory()
    assert available is not None and available > 0
    samples = int(available / (4 * 32)) + 1          # more float32 samples of 32 numbers than the memory holds
    with pytest.raises(LazyflowError, match=r"needs about .* GiB .*the samples.*more than 80% of the"):
        sample(model, (samples, *model.data_shape), steps=2, batch_size=64)
    monkeypatch.setenv("LAZYFLOW_MAX_MEMORY_GB", "0.001")   # 1 MiB: even a small run is too large
    with pytest.raises(LazyflowError, match="more than LAZYFLOW_MAX_MEMORY_GB"):
        sample(model, (4096, *model.data_shape), steps=4)
    monkeypatch.setenv("LAZYFLOW_MAX_MEMORY_GB", "1")
    x = sample(model, (4096, *model.data_shape), steps=4)
    assert x.shape == (4096, *model.data_shape) and torch.isfinite(x).all()


def test_a_file_run_is_bounded_by_memory_and_disk_before_it_samples(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAZYFLOW_MAX_MEMORY_GB", "0.01")        # 10 MiB: 100,000 digits (25.6 MB) do not fit
    assert main(["sample", "--model", "digits", "--n", "100000", "--batch-size", "1000",
                 "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the samples" in err and "LAZYFLOW_MAX_MEMORY_GB" in err
    assert not list(tmp_path.iterdir())                        # nothing written, nothing sampled
    monkeypatch.delenv("LAZYFLOW_MAX_MEMORY_GB")
    with pytest.raises(LazyflowError, match="GiB free; ask for fewer samples"):
        limits.check_disk(tmp_path / "not" / "yet", 1 << 62)
