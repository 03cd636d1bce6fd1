"""A new integrator written from this file alone (Ralston's second-order two-stage method: its tables and
its step as the formula, a builder, one registration) runs through ``sample``, the command line's choices,
the bench's listing and the diffusers scheduler, with no other file changed; and it is the method it
claims to be: equal to an independent Ralston loop written here, second order on exact Gaussian data."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from lazyflow import INTEGRATORS, LazyflowError, sample
from lazyflow.cli import main
from lazyflow.runtime.core.frames import Frame
from lazyflow.runtime.core.integrators import register_integrator
from lazyflow.runtime.core.plan import BuildContext, Call, Integrator, Tables

from exact import gaussian_velocity

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

F64 = torch.float64


@dataclass(frozen=True)
class RalstonStep(Tables):
    """x~ = x + (2h/3) b(t, x);  x' = x + h (b(t, x) / 4 + 3 b(t + 2h/3, x~) / 4) + sigma sqrt(h) xi, with the
    drift b = F x + G m of the sampling frame (``Frame.drift``); the tables are computed once per grid."""

    h: torch.Tensor
    now: Frame                  # each step's start t
    late: Frame                 # t + 2h/3, where the second call is made
    noise_scale: torch.Tensor   # sigma(t) sqrt(h)
    SECOND_CALL = "late"

    def step(self, k, x, m, xi, ops):
        h, drift = self.h[k], self.now.drift(k, x, m)
        x_late = x + 2 * h / 3 * drift
        drift_late = self.late.drift(k, x_late, (yield Call.at(self.late, k, x_late)))
        return x + h * (drift / 4 + 3 * drift_late / 4) + self.noise_scale[k] * xi


def _ralston(ctx: BuildContext) -> RalstonStep:
    late = ctx.frame(ctx.t0 + 2 * ctx.h / 3, ode=ctx.ode)
    return RalstonStep(h=ctx.h, now=ctx.now, late=late, noise_scale=ctx.now.sigma * torch.sqrt(ctx.h))


RALSTON = Integrator(name="ralston", order=2, build=_ralston, calls_per_step=2,
                     description="Ralston's second-order method (test)")


@pytest.fixture
def ralston():
    register_integrator(RALSTON)
    yield RALSTON
    del INTEGRATORS["ralston"]


def _independent_ralston(model, x, steps):
    """Ralston's method written out on the linear schedule (velocity model, uniform grid)."""
    t = torch.linspace(0, 1, steps + 1, dtype=F64)
    for k in range(steps):
        h = t[k + 1] - t[k]
        v1 = model(x, t[k].expand(x.shape[0]))
        v2 = model(x + 2 * h / 3 * v1, (t[k] + 2 * h / 3).expand(x.shape[0]))
        x = x + h * (v1 / 4 + 3 * v2 / 4)
    return x


def test_a_registered_integrator_samples_as_written(ralston):
    model = gaussian_velocity(0.5)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    ours = sample(model, (5, 3), schedule="linear", integrator="ralston", steps=6, dtype=F64, initial=z)
    assert torch.allclose(ours, _independent_ralston(model, z, 6), rtol=1e-12, atol=1e-13)
    assert RALSTON.nfe(6) == 12


@pytest.mark.parametrize("schedule", ["linear", "vp"])
def test_a_registered_integrator_converges_at_its_order(ralston, schedule):
    """On N(0, v) data the exact flow maps x_0 = z to sqrt(v) z; the error falls by about 4 per halving
    (measured rates 1.85-2.17 from 32 to 128 steps)."""
    v = 0.3
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    errors = [(sample(gaussian_velocity(v), (64, 2), schedule=schedule, integrator="ralston", steps=n, dtype=F64,
                      initial=z) - v**0.5 * z).abs().max().item() for n in (32, 64, 128)]
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert (rates > 1.8).all() and (rates < 2.2).all(), (errors, rates)


def test_a_registered_integrator_is_a_choice_of_the_command_line(ralston, tmp_path, capsys):
    out = tmp_path / "digits.npy"
    assert main(["sample", "--model", "digits", "--schedule", "linear", "--integrator", "ralston", "--steps", "2",
                 "--num-samples", "3", "--out", str(out)]) == 0
    x = np.load(out)
    assert x.shape == (3, 1, 8, 8) and np.isfinite(x).all()
    assert "ralston" in capsys.readouterr().out


def test_an_unregistered_name_is_refused_and_a_taken_name_too(ralston):
    with pytest.raises(LazyflowError, match="already"):
        register_integrator(RALSTON)
    del INTEGRATORS["ralston"]
    with pytest.raises(LazyflowError, match="unknown integrator 'ralston'"):
        sample(gaussian_velocity(1.0), (2, 2), integrator="ralston", schedule="pointmass")
    register_integrator(RALSTON)   # for the fixture's clean-up


def test_a_registered_integrator_is_in_the_bench(ralston):
    from lazyflow.runtime.evaluation.bench import our_methods

    names = {(m.schedule, m.integrator) for m in our_methods(full=False)}
    assert ("pointmass", "ralston") in names and ("vp", "ralston") in names


def test_a_registered_integrator_runs_in_the_diffusers_scheduler(ralston):
    """The scheduler drives the same loop: two calls per step (order 2), and the result equals ``sample``'s."""
    pytest.importorskip("diffusers")
    from lazyflow.diffusers import LazyFlowScheduler

    model = gaussian_velocity(0.5)
    scheduler = LazyFlowScheduler(schedule="vp", integrator="ralston", grid="uniform")
    scheduler.set_timesteps(4)
    assert scheduler.order == 2 and scheduler.nfe == 8
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    x = z
    for timestep in scheduler.timesteps:   # diffusers' convention: sigma = timestep / 1000, output = -velocity
        sigma = timestep / 1000
        x = scheduler.step(-model(x, (1 - sigma).expand(x.shape[0])), timestep, x, return_dict=False)[0]
    expected = sample(model, (3, 4), schedule="vp", integrator="ralston", steps=4, initial=z)
    assert torch.allclose(x, expected, rtol=1e-5, atol=1e-6), (x - expected).abs().max()


def test_a_registered_integrator_runs_captured_and_compiled_tables_cast(ralston, monkeypatch):
    """The step reads tables built once per grid: the captured loop (a re-run stands in for the CUDA graph on
    the CPU) replays the same computation as the eager run, chunk after chunk, and a float32 run reads the
    same tables cast (equal to the float64 run to float32 rounding, 1e-5 here)."""
    import lazyflow.runtime.core.sampler as sampler
    from lazyflow.runtime.core.capture import Rerun, clear_captures

    monkeypatch.setattr(sampler, "_recorder", Rerun)
    clear_captures()
    options = dict(schedule="linear-sde", integrator="ralston", steps=5, seed=4, batch_size=3)
    eager = sample(gaussian_velocity(0.5), (7, 2), **options)
    assert torch.equal(sample(gaussian_velocity(0.5), (7, 2), capture=True, **options), eager)   # same computation replayed
    clear_captures()
    wide = sample(gaussian_velocity(0.5), (7, 2), dtype=F64, **options)
    assert torch.allclose(eager.double(), wide, rtol=1e-5, atol=1e-5)


def test_every_registered_integrator_names_its_tables():
    """No one-letter tables: every coefficient of every registered integrator's plan has a name that says
    what it multiplies (the house style the step formulas are written in)."""
    from lazyflow.runtime.core.integrators import build_plan
    from lazyflow.runtime.core.data_stats import DataStats
    from lazyflow.runtime.core.grids import make_grid
    from lazyflow.runtime.core.schedule import load_schedule

    stats = DataStats.from_samples(torch.randn(50, 2, generator=torch.Generator().manual_seed(5)), kind="full")
    for name, entry in INTEGRATORS.items():
        if entry.needs_solver_file:
            continue
        schedule = load_schedule("linear-sde" if entry.stochastic else "linear")
        plan = build_plan(schedule, schedule, make_grid(schedule, schedule, 4), integrator=name, final_step="euler",
                          prediction="velocity", device="cpu", dtype=F64,
                          data_stats=stats if entry.needs_data_stats else None)
        names = {table.split("[")[0].split(".")[-1] for table in plan.coefficients.tables()}
        assert names and all(len(table) >= 4 for table in names), (name, names)   # before: a, b, c, p, q, A, C, F, G
