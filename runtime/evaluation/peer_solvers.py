"""iPNDM and DEIS-tAB, written from Zhang & Chen (2023), "Fast sampling of diffusion models with exponential
integrator", on the VE (EDM) form of our flow model; pure torch, peers of the bench (:mod:`.peers`); and the one
call of k-diffusion's samplers on any VE denoiser (:func:`sample_k_diffusion`).

The VE form of a velocity model v on the linear schedule x_t = t X + (1 - t) Z:

    sigma = (1 - t) / t,   x_ve = x_t / t = X + sigma Z,   D(x_ve, sigma) = E[X | x] = x_t + (1 - t) v(x_t, t)

with t = 1 / (1 + sigma), and its probability-flow ODE  dx_ve / dsigma = eps = (x_ve - D) / sigma.  A run from
sigma_max starts at x_ve = sigma_max z, the flow state (1 - t_s) z at t_s = 1 / (1 + sigma_max) (no data term).

Each sampler takes (denoiser, x_ve at sigmas[0], sigmas) as k-diffusion's do and makes one denoiser call per step
except at sigma = 0 (the last step to sigma = 0 uses the calls before it): ``len(sigmas) - 1`` calls when the last
sigma is 0.  Their orders ramp up with the history: the first step is Euler (DDIM), so the global error of a
ramped run is of order 2 as steps grow (the first step's local error h^2), whatever the later steps' order; each
later step of order k has local error O(h^(k+1)).  iPNDM's fixed coefficients assume equal steps in sigma: on a
grid not uniform in sigma (EDM's, uniform t) its later steps are of order 2 as well.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

__all__ = ["ve_denoiser", "edm_sigmas", "uniform_t_sigmas", "ipndm_step", "sample_ipndm", "deis_coefficients",
           "sample_deis_tab", "sample_k_diffusion", "IPNDM_COEFFICIENTS"]

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]

#: Adams-Bashforth coefficients of orders 1 to 4 on equal steps, newest derivative first
IPNDM_COEFFICIENTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ve_denoiser(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Denoiser:
    """D(x_ve, sigma) = x_t + (1 - t) v(x_t, t) with t = 1 / (1 + sigma), x_t = t x_ve (``model``: our velocity)."""
    def denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = 1.0 / (1.0 + float(sigma))
        x_t = t * x
        return x_t + (1.0 - t) * model(x_t, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
    return denoiser


def edm_sigmas(n: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> list[float]:
    """EDM's grid: sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho for i < n, then 0
    (n steps, n calls); n = 1 is the single step sigma_max -> 0."""
    if n == 1:
        return [sigma_max, 0.0]
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)] + [0.0]


def uniform_t_sigmas(n: int, *, sigma_max: float = 80.0) -> list[float]:
    """sigma = (1 - t) / t at t uniform on [1 / (1 + sigma_max), 1]: n steps, the last to sigma = 0 (n calls)."""
    t_start = 1.0 / (1.0 + sigma_max)
    times = [t_start + i / n * (1.0 - t_start) for i in range(n + 1)]
    return [(1.0 - t) / t for t in times[:-1]] + [0.0]


def ipndm_step(x: torch.Tensor, h: float, derivatives: Sequence[torch.Tensor]) -> torch.Tensor:
    """x + h sum_j b_j d_(i-j): Adams-Bashforth with the fixed coefficients of order len(derivatives) (newest first)."""
    coefficients = IPNDM_COEFFICIENTS[len(derivatives) - 1]
    return x + h * sum(b * d for b, d in zip(coefficients, derivatives))


def sample_ipndm(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float], *, max_order: int = 4) -> torch.Tensor:
    """iPNDM: d_i = (x_i - D(x_i, sigma_i)) / sigma_i, x_(i+1) = x_i + (sigma_(i+1) - sigma_i) sum_j b_j d_(i-j)
    with order min(i + 1, max_order) (:data:`IPNDM_COEFFICIENTS`)."""
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        d = (x - denoiser(x, sigmas[i])) / sigmas[i]
        history = [d, *history][:max_order]
        x = ipndm_step(x, sigmas[i + 1] - sigmas[i], history)
    return x


def _integral_of_power(p: int, a: float, b: float) -> float:
    """int_a^b tau^p dtau for an integer p (a, b > 0)."""
    return math.log(b / a) if p == -1 else (b ** (p + 1) - a ** (p + 1)) / (p + 1)


def _lagrange_coefficients(nodes: Sequence[float], j: int) -> list[float]:
    """The power coefficients c_p of l_j(tau) = prod_(m != j) (tau - nodes[m]) / (nodes[j] - nodes[m]), lowest first."""
    poly = [1.0]
    for m, node in enumerate(nodes):
        if m != j:
            scale = nodes[j] - node
            poly = [((poly[p - 1] if p > 0 else 0.0) - node * (poly[p] if p < len(poly) else 0.0)) / scale
                    for p in range(len(poly) + 1)]
    return poly


def deis_coefficients(t_from: float, t_to: float, nodes: Sequence[float]) -> list[float]:
    """C_j = int_(t_from)^(t_to) l_j(tau) dsigma/dtau dtau with sigma(tau) = (1 - tau) / tau, dsigma/dtau = -1/tau^2,
    l_j the Lagrange basis on the flow times ``nodes`` (newest first): x_ve(t_to) = x_ve(t_from) + sum_j C_j eps_j
    when eps is the polynomial through (nodes[j], eps_j).  In closed form: sum_p c_p int tau^(p - 2)."""
    return [-sum(c * _integral_of_power(p - 2, t_from, t_to) for p, c in enumerate(_lagrange_coefficients(nodes, j)))
            for j in range(len(nodes))]


def sample_deis_tab(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float], *, order: int = 3) -> torch.Tensor:
    """DEIS tAB: eps_i = (x_i - D(x_i, sigma_i)) / sigma_i, x_(i+1) = x_i + sum_j C_ij eps_(i-j), eps extrapolated by
    the polynomial in the flow time t = 1 / (1 + sigma) through the last min(i + 1, order) points
    (:func:`deis_coefficients`: the VE ODE dx/dsigma = eps has no linear part, so the exponential integrator's
    transition is 1 and the coefficients are the integrals of the Lagrange basis against dsigma)."""
    times = [1.0 / (1.0 + s) for s in sigmas]
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        history = [(x - denoiser(x, sigmas[i])) / sigmas[i], *history][:order]
        nodes = [times[i - j] for j in range(len(history))]
        x = x + sum(c * eps for c, eps in zip(deis_coefficients(times[i], times[i + 1], nodes), history))
    return x


def sample_k_diffusion(denoiser: Denoiser, x: torch.Tensor, nfe: int, seed: int, *, sampler: str, sigma_min: float,
                       sigma_max: float) -> torch.Tensor:
    """k-diffusion's ``sample_<sampler>`` with ``denoiser`` on get_sigmas_karras(n, sigma_min, sigma_max, rho=7) from
    x_ve = sigma_max x: n = nfe steps of one call (dpmpp_2m, lms, dpmpp_2m_sde), Heun n = (nfe + 1) // 2 (2n - 1
    calls: none at the last step, to sigma = 0); dpmpp_2m_sde draws its noise from a generator seeded with ``seed``.
    The sigmas are in x's dtype (float64 sigmas would turn a float32 state into float64 in Heun and LMS, which a
    float32 module refuses)."""
    from ..integrations.k_diffusion_samplers import load_k_diffusion_sampling

    k = load_k_diffusion_sampling()
    steps = (nfe + 1) // 2 if sampler == "heun" else nfe
    sigmas = k.get_sigmas_karras(steps, sigma_min, sigma_max, rho=7.0).to(x.dtype)   # else its append_dims promotes x
    options = {}
    if sampler == "dpmpp_2m_sde":
        generator = torch.Generator().manual_seed(seed)
        options["noise_sampler"] = lambda *_: torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return getattr(k, f"sample_{sampler}")(lambda y, sigma: denoiser(y, float(sigma.reshape(-1)[0])),
                                           x * float(sigmas[0]), sigmas, disable=True, **options)
