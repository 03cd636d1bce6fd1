"""Samples of every shipped (schedule, integrator, grid, prediction) equal those of the sampler before the
one-kernel-per-schedule redesign (tests/data/samples_before_redesign.safetensors, written by that version:
a linear-source model, 16 samples of an exact 2D mixture, 5 steps, float64, seed 0).  That version drew
its noise on the CPU with one torch generator per sample; ``legacy_noise`` reproduces those draws
through ``sample``'s ``noise`` option, so the comparison covers the stochastic runs too."""
import pytest
import torch
from safetensors.torch import load_file

from lazyflow import load_schedule, sample

from exact import GMMVelocity
from pathlib import Path

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

F64 = torch.float64
REFERENCE = load_file(str(Path(__file__).parent / "data" / "samples_before_redesign.safetensors"))
MODEL = GMMVelocity(torch.tensor([0.5, 0.3, 0.2], dtype=F64), torch.tensor([[-2.0, -1.0], [2.0, 0.5], [0.0, 2.5]], dtype=F64),
                    torch.tensor([0.3, 0.5, 0.2], dtype=F64))


def legacy_noise(schedule: str, steps: int):
    """The noise of the version before the redesign: sample i's draws came from one CPU generator seeded
    from (seed, i), all steps at once; a point-mass run had no start draw, so its step k used column k."""
    target = load_schedule(schedule)
    count = (0 if target.point_mass else 1) + (steps if target.stochastic else 0)
    shift = 1 if target.point_mass else 0

    def factory(seed, indices, shape, *, device, dtype):
        table = torch.empty((len(indices), max(count, 1), *shape))
        generator = torch.Generator()
        for row, index in enumerate(indices):
            generator.manual_seed((seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB)
                                  % (1 << 63))
            table[row] = torch.randn((max(count, 1), *shape), generator=generator)
        table = table.to(device=device, dtype=dtype)
        return lambda draw: table[:, draw - shift]
    return factory


def as_prediction(prediction):
    """The same linear-schedule model giving x-, noise- or score-predictions."""
    def model(x, t):
        v, tt = MODEL(x, t), t.reshape(-1, 1).to(x.dtype)
        noise = x - tt * v
        return {"x": x + (1 - tt) * v, "noise": noise, "score": -noise / (1 - tt)}[prediction]
    return model


#: runs changed on purpose since the reference was written: on a singular start (eps* of linear-sde and
#: vp-sde at t = 0) Heun's first corrector now uses the ODE drift at t' too (issue 13; tests/test_edges.py
#: test_heun_first_step_on_a_singular_start_is_the_ode_heun_step checks the new step exactly)
CHANGED = {f"{schedule}/heun/{grid}" for schedule in ("linear_sde", "vp_sde") for grid in ("logsnr", "source", "uniform")}


@pytest.mark.parametrize("key", sorted(set(REFERENCE) - CHANGED))
def test_same_samples_as_before(key):
    schedule, integrator, grid, *rest = key.split("/")
    prediction = rest[0] if rest else "velocity"
    model = MODEL if prediction == "velocity" else as_prediction(prediction)
    x = sample(model, (16, 2), schedule=schedule, steps=5, integrator=integrator, grid=grid, prediction=prediction,
               dtype=F64, seed=0, noise=legacy_noise(schedule, 5))
    assert torch.allclose(x, REFERENCE[key], rtol=1e-9, atol=1e-9), (x - REFERENCE[key]).abs().max()
