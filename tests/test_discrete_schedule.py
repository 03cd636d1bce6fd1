"""Discrete diffusion schedules (runtime/core/beta_schedules.py, discrete_schedule.py) and diffusers' diffusion
convention (runtime/integrations/diffusion_convention.py): the tables against diffusers' own and the papers'
closed forms, the path at its knots, derivatives against finite differences, and sampling with exact
Gaussian-data networks in noise, x and v prediction (float64) against the exact ODE map."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lazyflow import LazyflowError, load_schedule, sample
from lazyflow.runtime.core.beta_schedules import (alphas_cumprod_of_betas, alphas_cumprod_of_config, betas_of,
                                                  rescale_zero_terminal_snr)
from lazyflow.runtime.core.data_stats import DataStats
from lazyflow.runtime.core.discrete_schedule import (discrete_schedule, is_discrete, schedule_of_config,
                                                     time_of_timestep, timestep_of_time)
from lazyflow.runtime.integrations.diffusion_convention import from_diffusers_unet, prediction_of

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
F64 = torch.float64


def test_tables_match_diffusers_and_the_closed_forms():
    diffusers = pytest.importorskip("diffusers")
    for kind in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        for zero in (False, True):
            config = {**SD, "beta_schedule": kind, "rescale_betas_zero_snr": zero}
            theirs = diffusers.DDIMScheduler(**config).alphas_cumprod.double()
            assert (alphas_cumprod_of_config(config) - theirs).abs().max() < 2e-6, (kind, zero)   # theirs: float32
    betas = betas_of("linear", 1000, 1e-4, 0.02)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert betas_of("scaled_linear", 3, 0.01, 0.09).tolist() == pytest.approx([0.01, 0.04, 0.09])
    # improved DDPM: abar(s) = f(s) / f(0), so the product of 1 - beta telescopes (no beta reaches the cap here)
    f = [math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2 for s in (0.0, 0.5)]
    assert alphas_cumprod_of_betas(betas_of("squaredcos_cap_v2", 10))[4] == pytest.approx(f[1] / f[0], rel=1e-12)
    zero = rescale_zero_terminal_snr(alphas_cumprod_of_betas(betas))
    assert zero[-1] == 0 and zero[0] == pytest.approx(1 - 1e-4, rel=1e-12)


def test_the_path_at_its_knots_and_ends():
    table = alphas_cumprod_of_config(SD)
    schedule = schedule_of_config(SD)
    assert is_discrete(schedule) and schedule.describe() == "discrete-scaled_linear" and not is_discrete(load_schedule("vp"))
    k = torch.arange(1000, dtype=F64)
    t = time_of_timestep(schedule, k)
    assert torch.allclose(t, 1 - (k + 1) / 1001, rtol=0, atol=1e-15)          # M = N + 1: a virtual noise knot
    values = schedule.values(t)
    assert (values.beta**2 - table).abs().max() < 1e-14 and (values.alpha**2 - (1 - table)).abs().max() < 1e-14
    assert torch.equal(timestep_of_time(schedule, t, rounded=True), k)
    ends = schedule.values(torch.tensor([0.0, 1.0], dtype=F64))
    assert ends.alpha.tolist() == pytest.approx([1, 0], abs=1e-15) and ends.beta.tolist() == pytest.approx([0, 1], abs=1e-15)
    zero = schedule_of_config({**SD, "rescale_betas_zero_snr": True})
    assert float(time_of_timestep(zero, torch.tensor(999.0))) == 0                # M = N: the table ends at noise
    schedule.check_numerically()
    zero.check_numerically()


def test_derivatives_log_snr_and_its_inverse():
    schedule = schedule_of_config({**SD, "beta_schedule": "squaredcos_cap_v2"})
    t = torch.linspace(0.003, 0.997, 301, dtype=F64)
    h = 1e-7
    now, up, down = schedule.values(t), schedule.values(t + h), schedule.values(t - h)
    assert torch.allclose((up.alpha - down.alpha) / (2 * h), now.d_alpha, atol=1e-6)
    assert torch.allclose((up.beta - down.beta) / (2 * h), now.d_beta, atol=1e-6)
    lam = schedule.log_snr(t)
    assert torch.allclose(lam, torch.log(now.beta / now.alpha), atol=1e-12)
    assert torch.allclose(schedule.time_of_log_snr(lam), t, atol=1e-12)
    assert schedule.time_of_log_snr(torch.tensor([-math.inf, math.inf], dtype=F64)).tolist() == [0.0, 1.0]
    A, B, C = schedule.exponential(t[:-1], t[1:])                  # x' = alpha'/alpha x + (beta' - alpha' snr) X
    nxt = schedule.values(t[1:])
    assert torch.allclose(A, nxt.alpha / now.alpha[:-1]) and torch.allclose(B, nxt.beta - A * now.beta[:-1])
    assert (C == 0).all()


def _exact_unet(table: torch.Tensor, var: float, prediction_type: str):
    """The exact network of N(0, var I) data, called at float timesteps: the angle atan(sqrt(abar / (1 - abar)))
    interpolated linearly between integer timesteps (numpy.interp; beyond k = N - 1 to pi / 2... 0 at k = N)."""
    k = np.arange(-1, table.numel() + 1, dtype=np.float64)
    a = np.concatenate([[1.0], table.numpy(), [0.0]])
    angle = np.arctan2(np.sqrt(a), np.sqrt(1 - a))

    def unet(x, timestep):
        phi = torch.as_tensor(np.interp(timestep.double().numpy(), k, angle)).reshape(-1, 1)
        alpha, beta = torch.cos(phi), torch.sin(phi)
        noise = alpha * x / (alpha**2 + var * beta**2)
        data = var * beta * x / (alpha**2 + var * beta**2)
        return {"epsilon": noise, "sample": data, "v_prediction": beta * noise - alpha * data}[prediction_type]
    return unet


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("target", ["vp", "discrete", "linear"])
def test_exact_network_is_sampled_exactly_in_the_data_frame(prediction_type, target):
    """Gaussian data N(0, v I), its exact network on the discrete schedule: the data frame is exact (any target);
    the ODE map of the target from t0 sends alpha(t0) Z to sqrt(v) Z alpha(t0) / sqrt(alpha^2 + v beta^2)(t0)."""
    var, t0 = 0.3, 0.05
    source = schedule_of_config(SD)
    schedule = source if target == "discrete" else load_schedule(target)
    model, prediction = from_diffusers_unet(_exact_unet(alphas_cumprod_of_config(SD), var, prediction_type), source,
                                            prediction_type)
    z = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    start = schedule.values(torch.tensor([t0], dtype=F64))
    exact = math.sqrt(var) * z * start.alpha / torch.sqrt(start.alpha**2 + var * start.beta**2)
    grid = torch.linspace(t0, 1, 7, dtype=F64)
    out = sample(model, (6, 3), schedule=schedule, source=source, prediction=prediction, grid=grid,
                 integrator="data-euler", data_stats=DataStats.isotropic((3,), var), dtype=F64, initial=z)
    assert (out - exact).abs().max() < 1e-12


def test_lazy_multistep_converges_to_the_exact_map_as_on_vp():
    """The exact network on the discrete source: the lazy vp run converges to the exact map (second order: 16x
    per 4x steps in theory) and equals the run of the same network on the continuous vp source (to 1e-10: the
    target, its grid and eta_X are the same; only the source's time differs)."""
    var, t0 = 0.3, 0.05
    source, vp = schedule_of_config(SD), load_schedule("vp")
    model, prediction = from_diffusers_unet(_exact_unet(alphas_cumprod_of_config(SD), var, "epsilon"), source, "epsilon")

    def on_vp(x, t):
        values = vp.values(t.to(F64))
        alpha, beta = values.alpha.reshape(-1, 1), values.beta.reshape(-1, 1)
        return alpha * x / (alpha**2 + var * beta**2)

    z = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    start = vp.values(torch.tensor([t0], dtype=F64))
    exact = math.sqrt(var) * z * start.alpha / torch.sqrt(start.alpha**2 + var * start.beta**2)
    runs = {(n, name): sample(net, (6, 3), schedule="vp", source=src, prediction=prediction, integrator="multistep-pc",
                              grid=torch.linspace(t0, 1, n + 1, dtype=F64), dtype=F64, initial=z)
            for n in (64, 256) for name, net, src in (("discrete", model, source), ("vp", on_vp, vp))}
    errors = [float((runs[n, "discrete"] - exact).abs().max()) for n in (64, 256)]
    assert errors[1] < errors[0] / 8 and errors[1] < 1e-4, errors
    assert all((runs[n, "discrete"] - runs[n, "vp"]).abs().max() < 1e-10 for n in (64, 256))


def test_rounded_timesteps_are_integers():
    source = schedule_of_config(SD)
    seen = []
    model, _ = from_diffusers_unet(lambda x, k: seen.append(k) or x, source, "epsilon", rounded=True)
    model(torch.zeros(2, 1), torch.tensor([0.3, 0.71], dtype=F64))
    assert seen[0].tolist() == [round(1001 * 0.7 - 1), round(1001 * 0.29 - 1)]


def test_refusals_are_one_line():
    refusals = [
        lambda: betas_of("sigmoid", 1000),
        lambda: alphas_cumprod_of_betas([0.1, -0.2]),
        lambda: discrete_schedule([0.5, 0.7]),
        lambda: discrete_schedule([0.5]),
        lambda: alphas_cumprod_of_config({"trained_betas": [0.1, 0.2], "num_train_timesteps": 1000}),
        lambda: prediction_of("flow"),
        lambda: timestep_of_time(load_schedule("vp"), torch.zeros(1)),
        lambda: schedule_of_config(SD).with_params(shift=2.0),
        lambda: schedule_of_config(SD).with_diffusion_scale(0.5),
    ]
    for refuse in refusals:
        with pytest.raises(LazyflowError) as err:
            refuse()
        assert "\n" not in str(err.value)
