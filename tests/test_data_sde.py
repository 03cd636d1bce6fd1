"""The stochastic data frame (data-sde*, runtime/core/data_frame.py, derive/MATH.md §10).

On Gaussian data N(mu, Sigma) the sampler's output is affine in (z, xi_1..xi_N): its mean (zero inputs) and
covariance (basis vectors pushed through the sampler) must equal (mu, Sigma).  That alone cannot see the
damping D (A^2 r + C^2 = r(t') for every D), so the two-time covariance Cov(y(t_k), y(1)) = Phi r(t_k) is
checked against Phi from an independent quadrature of eps/r (scipy) and the tables against the SymPy
transition; on a mixture the strong error to a fine solve on the same Brownian path falls at a measured rate."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
from scipy.integrate import quad

from lazyflow import DataStats, LazyflowError, sample
from lazyflow.derive.gaussian_frame import direction_sde_transition
from lazyflow.derive.symbols import t as t_sym, t_next
from lazyflow.runtime.core.data_frame import data_frame_integrator, stochastic_data_frame
from lazyflow.runtime.core.grids import make_grid
from lazyflow.runtime.core.integrators import INTEGRATORS, build_plan
from lazyflow.runtime.core.plan import drive
from lazyflow.runtime.core.schedule import load_schedule

from exact import GMMVelocity
from test_data_frame import gaussian

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

F64 = torch.float64
SDE_PC = data_frame_integrator(order=2, corrector=True, stochastic=True)   # built, not registered
SDE_FRAMES = [name for name, method in INTEGRATORS.items() if stochastic_data_frame(method)] + [SDE_PC]
LINEAR = load_schedule("linear")


def _target(scale: float, name: str = "linear-sde"):
    target = load_schedule(name)
    return target if scale == 1 else target.with_diffusion_scale(scale)


def _plan(target, steps: int, name: str, stats, grid="uniform"):
    return build_plan(target, LINEAR, make_grid(target, LINEAR, steps, grid), integrator=name, final_step="euler",
                      prediction="velocity", device="cpu", dtype=F64, data_stats=stats)


def _run(plan, model, z: torch.Tensor, noise, seen: list | None = None) -> torch.Tensor:
    def evaluate(call):
        if seen is not None:
            seen.append(call.x.clone())
        return model(call.x * call.in_scale, call.tau.expand(call.x.shape[0]))
    return drive(plan.loop(z, noise), evaluate)


def _affine_moments(plan, model, d: int, steps: int):
    """Push 0 and every basis vector of (z, xi_0..xi_N-1) through the sampler: the mean, the matrix J of the
    affine map (rows: inputs), and the states at the calls."""
    inputs = d * (steps + 1)
    e = torch.cat([torch.zeros(1, inputs, dtype=F64), torch.eye(inputs, dtype=F64)])
    seen: list = []
    out = _run(plan, model, e[:, :d].clone(), lambda k: e[:, d * (k + 1): d * (k + 2)], seen)
    return out[0], out[1:] - out[0], seen


@pytest.mark.parametrize("kind", ["scalar", "diag", "full"])
@pytest.mark.parametrize("name", SDE_FRAMES)
def test_mean_and_covariance_exact_on_the_datas_gaussian(kind, name):
    d = 4
    model, _, stats = gaussian(d, seed=7 + len(kind), kind=kind)
    basis = stats.basis if kind == "full" else torch.eye(d, dtype=F64)
    sigma = basis @ torch.diag(stats.var.expand(d)) @ basis.T
    for scale in (1.0, 0.5):
        for steps in (1, 2, 4, 8):
            mean, jac, _ = _affine_moments(_plan(_target(scale), steps, name, stats), model, d, steps)
            assert (mean - stats.mean).abs().max() < 1e-10, (scale, steps)
            assert (jac.T @ jac - sigma).abs().max() < 1e-10, (scale, steps)


@pytest.mark.parametrize("schedule", ["linear-sde", "vp-sde"])
def test_two_time_covariance_against_an_independent_quadrature(schedule):
    """Cov(y(t_k), y(1)) = Phi(t_k, 1) r(t_k), Phi = sqrt(r(1)/r(t_k)) exp(-int eps/r) with eps = sigma^2/2 of
    the schedule itself, integrated by scipy: a wrong damping fails here (not in the marginal moments)."""
    d, steps, scale = 3, 6, 0.7
    model, _, stats = gaussian(d, seed=3, kind="diag")
    target = _target(scale, schedule)
    plan = _plan(target, steps, SDE_PC, stats)
    _, jac, seen = _affine_moments(plan, model, d, steps)
    times = plan.times.tolist()
    for k in (2, 4):
        x_k = seen[k - 1][1:] - seen[k - 1][0]           # calls at t_1, ... (no call at t = 0)
        cross = torch.diagonal(x_k.T @ jac)
        for i, lam in enumerate(stats.var.tolist()):
            def r(s):
                v = target.values(torch.tensor([s], dtype=F64))
                return float(v.alpha**2 + lam * v.beta**2)

            def eps_over_r(s):
                return float(target.values(torch.tensor([s], dtype=F64)).eps) / r(s)

            damping = np.exp(-quad(eps_over_r, times[k], 1.0, limit=200, epsabs=1e-13, epsrel=1e-12)[0])
            assert abs(float(cross[i]) - np.sqrt(r(1.0) / r(times[k])) * damping * r(times[k])) < 1e-9, (k, i)


def test_tables_match_the_symbolic_transition():
    """A = Phi and C^2 = V of derive/gaussian_frame.py direction_sde_transition, per direction and step."""
    lam, scale = sp.Symbol("lam", positive=True), sp.Rational(3, 5)
    phi, var = (sp.lambdify((t_sym, t_next, lam), e, "numpy") for e in direction_sde_transition((1 - t_sym, t_sym), lam, scale))
    _, _, stats = gaussian(3, seed=5, kind="diag")
    plan = _plan(_target(0.6), 7, "data-sde", stats, grid="logsnr")
    t = plan.times.numpy()
    for k in range(1, 7):   # from t = 0 the closed form is the limit D = 0 (log 0)
        for i, v in enumerate(stats.var.tolist()):
            assert abs(plan.coefficients.propagator[k, i].item() - phi(t[k], t[k + 1], v)) < 1e-12
            assert abs(plan.coefficients.noise_scale[k, i].item() ** 2 - var(t[k], t[k + 1], v)) < 1e-12
    assert torch.all(plan.coefficients.propagator[0] == 0)   # the first step forgets the start (infinite eps* at t = 0)


MIXTURE = GMMVelocity(torch.tensor([0.5, 0.3, 0.2], dtype=F64), torch.tensor([[-1.0, -0.5], [1.0, 0.3], [0.0, 1.2]], dtype=F64),
                      torch.tensor([0.5, 0.6, 0.45], dtype=F64))


def _mixture_stats() -> DataStats:
    """The mixture's exact mean and per-coordinate variance."""
    w, m, s = MIXTURE.weights, MIXTURE.means, MIXTURE.stds
    mean = (w[:, None] * m).sum(0)
    var = (w[:, None] * (m**2 + s[:, None] ** 2)).sum(0) - mean**2
    return DataStats("diag", mean, var)


def _coupled_noise(fine, coarse_steps: int, fine_noise: torch.Tensor):
    """The coarse steps' xi on the same Brownian path as the fine run's: C xi = sum_j Phi(t_j+1, t') C_j xi_j over
    the fine steps j inside a coarse step, Phi the product of the later fine A's (the semigroup of the exact
    Gaussian part), divided by the coarse C."""
    A, C = fine.coefficients.propagator, fine.coefficients.noise_scale
    per = A.shape[0] // coarse_steps
    out = []
    for k in range(coarse_steps):
        total, phi = torch.zeros_like(fine_noise[0]), torch.ones_like(A[0])
        for j in reversed(range(k * per, (k + 1) * per)):
            total = total + phi * C[j] * fine_noise[j]
            phi = phi * A[j]
        out.append(total)
    return out


@pytest.mark.parametrize("name,low", [("data-sde", 0.8), ("data-sde-multistep", 0.8), (SDE_PC, 0.8)])
def test_strong_convergence_on_a_mixture(name, low):
    """On one Brownian path per sample, the RMS error at 32, 64, 128 steps to data-sde-multistep-pc at 1024 steps
    falls at a measured rate >= ``low`` (the residual f(t, x_t) is only Hölder-1/2 along a path: strong order 1;
    measured RMS 0.033, 0.011, 0.0056 for data-sde)."""
    stats, n, d, fine_steps = _mixture_stats(), 64, 2, 1024
    target = _target(1.0)
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(11), dtype=F64)
    xi = torch.randn(fine_steps, n, d, generator=torch.Generator().manual_seed(12), dtype=F64)
    fine = _plan(target, fine_steps, SDE_PC, stats)
    ref = _run(fine, MIXTURE, z.clone(), lambda k: xi[k])
    errors = []
    for steps in (32, 64, 128):
        plan = _plan(target, steps, name, stats)
        coarse = _coupled_noise(fine, steps, xi)
        noise = [c / plan.coefficients.noise_scale[k] for k, c in enumerate(coarse)]
        errors.append((_run(plan, MIXTURE, z.clone(), lambda k: noise[k]) - ref).pow(2).sum(1).mean().sqrt().item())
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert rates.mean() >= low and errors[-1] < 0.05, (errors, rates)


def test_sample_runs_it_from_seeds_and_refuses_ode_schedules():
    """Through sample: per-sample seeds (batch-size independent), and the ODE/point-mass refusals."""
    model, _, stats = gaussian(3, seed=2, kind="diag")
    a = sample(model, (6, 3), schedule="linear-sde", integrator="data-sde-multistep", steps=4, dtype=F64,
               data_stats=stats, seed=3)
    b = sample(model, (6, 3), schedule="linear-sde", integrator="data-sde-multistep", steps=4, dtype=F64,
               data_stats=stats, seed=3, batch_size=2)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    for schedule in ("linear", "pointmass"):
        with pytest.raises(LazyflowError, match="optimal diffusion"):
            sample(model, (2, 3), schedule=schedule, integrator="data-sde", steps=4, dtype=F64, data_stats=stats)


def test_the_diffusers_scheduler_runs_the_stochastic_frame_and_equals_sample(tmp_path):
    """The scheduler's data-sde run (with the call at the first sigma, as a pipeline makes it) draws the same
    per-sample noise as sample with the same seed and integrator."""
    pytest.importorskip("diffusers")
    from lazyflow.diffusers import LazyFlowScheduler
    from lazyflow.runtime.core.data_frame import without_skip

    model, _, stats = gaussian(4, seed=2, kind="full")
    path = stats.save(tmp_path / "stats.safetensors")
    scheduler = LazyFlowScheduler(schedule="linear-sde", integrator="data-sde-multistep", grid="uniform",
                                  data_stats=str(path), diffusion_scale=0.5, seed=5)
    scheduler.set_timesteps(4)
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    x = z
    for timestep in scheduler.timesteps:
        sigma = (timestep / 1000).to(F64)
        x = scheduler.step(-model(x, (1 - sigma).expand(3)), timestep, x, return_dict=False)[0]
    ref = sample(model, (3, 4), schedule=_target(0.5), integrator=without_skip(INTEGRATORS["data-sde-multistep"]),
                 steps=4, dtype=F64, initial=z, data_stats=stats, seed=5)
    other = sample(model, (3, 4), schedule=_target(0.5), integrator=without_skip(INTEGRATORS["data-sde-multistep"]),
                   steps=4, dtype=F64, initial=z, data_stats=stats, seed=6)
    assert torch.isfinite(x).all() and (x - ref).abs().max() < 1e-6 < (x - other).abs().max()


@pytest.mark.slow   # the bench's 800-step path reference: ~2-4 s
def test_the_bench_runs_the_stochastic_frames_and_the_data_frame_grid():
    """data_frame_methods: data-sde rows in the optimal-diffusion schedules at the bench's diffusion scales (no
    path: stochastic), the 4-NFE grid for the ODE frames; a data-sde row scores and reproduces from its flags."""
    from lazyflow.runtime.evaluation.bench import DATA_FRAME_GRID, OurMethod, data_frame_methods, run_quality_bench

    names = {m.name for m in data_frame_methods(True, ("full",))}
    assert {"linear-sde/data-sde/uniform[full]", "vp-sde*0.25/data-sde-multistep/logsnr[full]",
            f"linear/data-multistep/{DATA_FRAME_GRID}[full]"} <= names
    assert not any("data-sde" in n and not n.split("/")[0].split("*")[0].endswith("-sde") for n in names)
    method = OurMethod("linear-sde", "data-sde-multistep", "uniform", None, 0.25, stats="diag")
    result = run_quality_bench("gmm:3,dim=8,components=3,rank=2", [4], 48, 1, include_peers=False,
                               methods=[method], log=lambda *a: None)
    row = next(r for r in result["rows"] if r["method"] == method.name)
    assert row["stochastic"] and row["path"] is None and row["nfe"] == 4 and np.isfinite(row["nll_gap"])
