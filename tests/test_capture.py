"""Whole-loop capture: the static-buffer logic on the CPU (a re-run stands in for the CUDA graph), and
the real graph on a GPU (marked gpu)."""
import pytest
import torch

import lazyflow.runtime.core.sampler as sampler
from lazyflow import LazyflowError, sample
from lazyflow.runtime.core.capture import Rerun, clear_captures

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

LAYER = torch.nn.Linear(3, 3).double()


def model(x, t, scale=None):
    out = LAYER(x.double()).to(x.dtype) * (1 - t.reshape(-1, 1))
    return out if scale is None else out * scale.reshape(-1, 1)


@pytest.fixture
def rerun(monkeypatch):
    monkeypatch.setattr(sampler, "_recorder", Rerun)
    clear_captures()
    yield
    clear_captures()


@pytest.mark.parametrize("schedule,integrator", [("linear", "heun"), ("pointmass", "euler"),
                                                 ("vp-sde", "multistep-pc"), ("linear-sde", "exp-midpoint")])
def test_captured_chunks_equal_the_eager_run(rerun, schedule, integrator):
    """Chunks after the first go through the static buffers: start state, noise keys, conditioning."""
    scale = torch.linspace(0.5, 2, 10)
    options = dict(schedule=schedule, integrator=integrator, steps=4, seed=1, batch_size=4,
                   model_kwargs={"scale": scale})
    with torch.no_grad():
        eager = sample(model, (10, 3), **options)
        captured = sample(model, (10, 3), capture=True, **options)
        again = sample(model, (10, 3), capture=True, **{**options, "seed": 2})   # the cached capture, new keys
        assert torch.equal(captured, eager)
        assert torch.equal(again, sample(model, (10, 3), **{**options, "seed": 2}))


def test_captured_point_mass_start_uses_the_initial_buffer(rerun):
    initial = torch.randn(6, 3)
    with torch.no_grad():
        eager = sample(model, (6, 3), schedule="pointmass", steps=3, batch_size=3, initial=initial, integrator="euler")
        captured = sample(model, (6, 3), schedule="pointmass", steps=3, batch_size=3, initial=initial, capture=True, integrator="euler")
    assert torch.equal(captured, eager)


def test_capture_refuses_what_it_cannot_record(rerun):
    with pytest.raises(LazyflowError, match="callback"):
        sample(model, (2, 3), capture=True, callback=lambda info: None, schedule="pointmass", integrator="euler")


def test_capture_needs_cuda_on_the_real_recorder():
    with pytest.raises(LazyflowError, match="CUDA"):
        sample(model, (2, 3), capture=True, schedule="pointmass", integrator="euler")


@pytest.mark.gpu
@pytest.mark.parametrize("schedule,integrator", [("linear", "euler"), ("pointmass", "multistep-pc")])
def test_cuda_graph_equals_eager_on_the_gpu(schedule, integrator):
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.SiLU(), torch.nn.Linear(256, 64)).cuda()

    def gpu_model(x, t):
        return net(x) * (1 - t.reshape(-1, 1))

    options = dict(schedule=schedule, integrator=integrator, steps=8, seed=0, batch_size=16, device="cuda")
    with torch.no_grad():
        eager = sample(gpu_model, (48, 64), **options)
        captured = sample(gpu_model, (48, 64), capture=True, **options)
    assert torch.allclose(captured, eager, atol=1e-5)
