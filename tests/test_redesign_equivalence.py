"""Samples of every shipped (schedule, integrator, grid, prediction) equal those of the sampler before the
one-kernel-per-schedule redesign (tests/data/samples_before_redesign.safetensors, written by that version:
a linear-source model, 16 samples of an exact 2D mixture, 5 steps, float64, seed 0)."""
import pytest
import torch
from safetensors.torch import load_file

from lazyflow import sample

from exact import GMMVelocity
from pathlib import Path

F64 = torch.float64
REFERENCE = load_file(str(Path(__file__).parent / "data" / "samples_before_redesign.safetensors"))
MODEL = GMMVelocity(torch.tensor([0.5, 0.3, 0.2], dtype=F64), torch.tensor([[-2.0, -1.0], [2.0, 0.5], [0.0, 2.5]], dtype=F64),
                    torch.tensor([0.3, 0.5, 0.2], dtype=F64))


def as_prediction(prediction):
    """The same linear-schedule model giving x-, noise- or score-predictions."""
    def model(x, t):
        v, tt = MODEL(x, t), t.reshape(-1, 1).to(x.dtype)
        noise = x - tt * v
        return {"x": x + (1 - tt) * v, "noise": noise, "score": -noise / (1 - tt)}[prediction]
    return model


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_same_samples_as_before(key):
    schedule, integrator, grid, *rest = key.split("/")
    prediction = rest[0] if rest else "velocity"
    model = MODEL if prediction == "velocity" else as_prediction(prediction)
    x = sample(model, (16, 2), schedule=schedule, steps=5, integrator=integrator, grid=grid, prediction=prediction,
               dtype=F64, seed=0)
    assert torch.allclose(x, REFERENCE[key], rtol=1e-9, atol=1e-9), (x - REFERENCE[key]).abs().max()
