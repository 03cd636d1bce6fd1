"""iPNDM and DEIS-tAB (runtime/evaluation/peer_solvers.py) against the exact probability-flow ODE of Gaussian data,
and the VE form of a flow model (pure torch: no optional package)."""
import math

import numpy as np
import pytest
import torch

from lazyflow import sample
from lazyflow.runtime.evaluation.peer_solvers import (deis_coefficients, edm_sigmas, ipndm_step, sample_deis_tab,
                                                      sample_ipndm, uniform_t_sigmas, ve_denoiser)

F64 = torch.float64
M, S2 = 0.7, 0.3 ** 2      # X ~ N(M, S2) in one dimension


def denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[X | X + sigma Z = x] = M + S2 / (S2 + sigma^2) (x - M)."""
    return M + S2 / (S2 + sigma ** 2) * (x - M)


def exact(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """The VE probability-flow ODE's solution: x - M scales with sqrt(S2 + sigma^2)."""
    return M + (x - M) * math.sqrt(S2 + sigma_to ** 2) / math.sqrt(S2 + sigma_from ** 2)


X_START = torch.tensor([1.3, -2.0, 0.1], dtype=F64)


def eps(sigma: float, x: torch.Tensor) -> torch.Tensor:
    return (x - denoiser(x, sigma)) / sigma


def orders(errors):
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_each_ipndm_step_of_order_k_has_local_error_of_order_k_plus_1(k):
    """One step from the exact state with the exact past derivatives at equal steps (its fixed coefficients)."""
    sigma, errors = 2.0, []
    for h in (0.05, 0.025, 0.0125):
        history = [eps(sigma + j * h, exact(X_START, 3.0, sigma + j * h)) for j in range(k)]
        x = exact(X_START, 3.0, sigma)
        errors.append(float((ipndm_step(x, -h, history) - exact(X_START, 3.0, sigma - h)).abs().max()))
    assert all(abs(p - (k + 1)) < 0.35 for p in orders(errors)), orders(errors)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_each_deis_step_of_order_k_has_local_error_of_order_k_plus_1_on_uneven_nodes(k):
    """eps extrapolated in t = 1 / (1 + sigma) through k uneven past nodes, one step from the exact state."""
    t_now, errors = 0.4, []
    for h in (0.04, 0.02, 0.01):
        nodes = [t_now - h * (1.3 ** j - 1) / 0.3 for j in range(k)]     # steps h, 1.3 h, 1.69 h back
        sigmas = [(1 - t) / t for t in nodes]
        history = [eps(s, exact(X_START, 3.0, s)) for s in sigmas]
        t_next = t_now + h
        x = exact(X_START, 3.0, sigmas[0])
        step = x + sum(c * e for c, e in zip(deis_coefficients(t_now, t_next, nodes), history))
        errors.append(float((step - exact(X_START, 3.0, (1 - t_next) / t_next)).abs().max()))
    assert all(abs(p - (k + 1)) < 0.35 for p in orders(errors)), orders(errors)


def test_deis_coefficients_equal_gauss_legendre_quadrature():
    """The closed form against 40-point Gauss-Legendre of l_j(tau) * (-1 / tau^2) on [t_from, t_to]."""
    nodes, t_from, t_to = [0.3, 0.22, 0.1], 0.3, 0.45
    u, w = np.polynomial.legendre.leggauss(40)
    tau = (t_to - t_from) / 2 * u + (t_to + t_from) / 2
    for j, c in enumerate(deis_coefficients(t_from, t_to, nodes)):
        basis = np.prod([(tau - nodes[m]) / (nodes[j] - nodes[m]) for m in range(3) if m != j], axis=0)
        assert c == pytest.approx((t_to - t_from) / 2 * np.sum(w * basis * -1 / tau ** 2), rel=1e-12)


def run_errors(solver, grid, steps=(32, 64, 128)):
    errors = []
    for n in steps:
        sigmas = grid(n)
        x = X_START * sigmas[0]
        errors.append(float((solver(denoiser, x, sigmas) - exact(x, sigmas[0], 0.0)).abs().max()))
    return errors


def test_deis_tab3_converges_at_order_3_on_the_edm_grid():
    """The first (Euler) step's O(h^2) error is divided by sigma_max / S at the end: order 3 shows."""
    assert all(p > 2.7 for p in orders(run_errors(sample_deis_tab, edm_sigmas))), orders(run_errors(
        sample_deis_tab, edm_sigmas))


def test_ipndm_converges_at_order_2_on_the_edm_grid():
    """Fixed equal-step coefficients on a grid not uniform in sigma: order 2 (measured 2.2, 2.1)."""
    found = orders(run_errors(sample_ipndm, edm_sigmas))
    assert all(1.8 < p < 2.6 for p in found), found


def test_the_grids_spend_one_call_per_step_and_end_at_sigma_0():
    for grid in (edm_sigmas, uniform_t_sigmas):
        calls = []
        sigmas = grid(5)
        sample_ipndm(lambda x, s: calls.append(s) or denoiser(x, s), X_START * sigmas[0], sigmas)
        assert len(sigmas) == 6 and sigmas[-1] == 0 and len(calls) == 5 and sigmas[0] == pytest.approx(80)
    assert edm_sigmas(5)[-2] == pytest.approx(0.002)
    assert [1 / (1 + s) for s in uniform_t_sigmas(4)] == pytest.approx([1 / 81 + i / 4 * 80 / 81 for i in range(5)])


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The linear schedule's velocity for X ~ N(M, S2): E[X | x_t] = M + t S2 (x_t - t M) / (t^2 S2 + (1 - t)^2),
    E[Z | x_t] = (x_t - t E[X | x_t]) / (1 - t), v = E[X | x_t] - E[Z | x_t]."""
    t = t.reshape(-1, *([1] * (x.dim() - 1)))
    mean = M + t * S2 * (x - t * M) / (t ** 2 * S2 + (1 - t) ** 2)
    return mean - (x - t * mean) / (1 - t)


def test_the_ve_denoiser_of_the_flow_velocity_is_the_ve_posterior_mean():
    x = torch.linspace(-3, 3, 7, dtype=F64).reshape(7, 1)
    for sigma in (0.01, 0.5, 3.0, 80.0):
        assert torch.allclose(ve_denoiser(gaussian_velocity)(x, sigma), denoiser(x, sigma), atol=1e-12)


@pytest.mark.parametrize("solver", [sample_ipndm, sample_deis_tab])
def test_the_first_step_is_our_linear_euler_on_the_matching_flow_times(solver):
    """One step sigma_0 -> sigma_1 (order 1: Euler in x_ve, DDIM) equals lazyflow's linear Euler from t_0 to t_1
    started from (1 - t_0) z, which is x_ve = sigma_0 z."""
    z = torch.linspace(-2, 2, 5, dtype=F64).reshape(5, 1)
    for sigmas in ([80.0, 3.0], [14.6, 0.5], edm_sigmas(6)[:2]):
        ve = solver(ve_denoiser(gaussian_velocity), z * sigmas[0], sigmas)
        times = [1 / (1 + s) for s in sigmas]
        ours = sample(gaussian_velocity, (5, 1), schedule="linear", integrator="euler", grid=times, dtype=F64,
                      initial=z, final_step="euler")
        assert torch.allclose(ve * times[1], ours, atol=1e-12)    # x_t = t x_ve
