"""Metrics on the exact Gaussian-mixture benchmark, each with a known floor (what exact samples score).

* ``fd``: Fréchet distance |m - m*|^2 + tr(S + S* - 2 (S^1/2 S* S^1/2)^1/2) between the samples' mean and
  covariance and the mixture's exact ones, in the raw coordinates when d <= 256, else after a fixed random
  orthonormal projection to 256 coordinates (seeded; the exact projected moments are P m*, P S* P^T).
* ``sw``: sliced Wasserstein-2 distance sqrt(mean_l W2^2(<u_l, X>, <u_l, Y>)) to a fixed reference set of
  exact samples of the same size, over 256 fixed random unit directions u_l (seeded); W2 in one dimension
  pairs sorted values (quantiles).
* ``weight_tv``: each sample is assigned to its most likely component, argmax_k w_k N(x; mu_k, C_k);
  the total variation (1/2) sum_k |n_k / n - w_k| between the assigned and the true weights.  In high
  dimension this also counts width errors: a sample left with too much noise in the d - r isotropic
  directions of a narrow component is more likely under a wide one (measured on gmm4096 at 4 NFE: 0.45-0.49
  against a floor of 0.04 at 500 samples).
* ``nll_gap``: the exact negative log-likelihood gap mean_i -log p(x_i) - E[-log p(X)] (nats per sample),
  the expectation estimated once from :data:`NLL_BASELINE_SETS` sets of 2,000 exact samples (seeds
  30,000 on).  It sees what moments cannot (mass between the components, components too wide or too
  narrow); a sampler that piles samples onto the modes scores below 0, so it is compared in absolute value.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import LazyflowError
from ..models.gmm import GaussianMixture
from .metrics import frechet_distance

__all__ = ["projection", "mixture_fd", "sliced_wasserstein", "weight_tv", "mean_nll", "nll_baseline", "MixtureScorer",
           "PROJECTED_DIM", "METRIC_LABELS", "NLL_BASELINE_SETS"]

#: FD is taken in at most this many coordinates
PROJECTED_DIM = 256
#: number of directions of the sliced Wasserstein distance
DIRECTIONS = 256
METRIC_LABELS = {"fd": "Fréchet distance to the exact moments", "sw": "sliced Wasserstein-2 to exact samples",
                 "weight_tv": "total variation of the assigned component weights",
                 "nll_gap": "exact negative log-likelihood gap to exact samples (nats per sample)"}
#: sets of 2,000 exact samples whose mean negative log-likelihood is the baseline of nll_gap
NLL_BASELINE_SETS = 10
NLL_BASELINE_SEED = 30_000


def projection(dim: int, size: int = PROJECTED_DIM, seed: int = 1234) -> torch.Tensor | None:
    """None when dim <= size, else a fixed (size, dim) matrix with orthonormal rows (QR of a seeded Gaussian)."""
    if dim <= size:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(dim, size, generator=g, dtype=torch.float64)).Q.T.contiguous()


def _flat(samples: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(samples).all():
        raise LazyflowError("samples contain NaN or inf")
    return samples.reshape(len(samples), -1).to(torch.float64).cpu()


def mixture_fd(samples: torch.Tensor, mixture: GaussianMixture, proj: torch.Tensor | None = None) -> float:
    """Fréchet distance of the samples' (projected) mean and covariance to the mixture's exact ones."""
    x = _flat(samples)
    if proj is not None:
        x = x @ proj.T
    exact_mean = mixture.mean() if proj is None else proj @ mixture.mean()
    exact_cov = mixture.covariance(proj)
    return frechet_distance(x.mean(0).numpy(), np.cov(x.numpy(), rowvar=False), exact_mean.numpy(), exact_cov.numpy())


def directions(dim: int, count: int = DIRECTIONS, seed: int = 4321) -> torch.Tensor:
    """(dim, count) fixed random unit vectors."""
    u = torch.randn(dim, count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u / u.norm(dim=0, keepdim=True)


def _quantiles(sorted_values: torch.Tensor, n: int) -> torch.Tensor:
    """The empirical quantile function of sorted columns at the n mid-points (i + 1/2)/n (exact for equal n)."""
    m = sorted_values.shape[0]
    if m == n:
        return sorted_values
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n * m - 0.5
    lo = levels.floor().clamp(0, m - 1).long()
    hi = (lo + 1).clamp(max=m - 1)
    frac = (levels - lo).clamp(0, 1)[:, None]
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, dirs: torch.Tensor) -> float:
    """sqrt(mean over directions u of W2^2(<u, a>, <u, b>)); unequal sizes compare interpolated quantiles."""
    pa, pb = (torch.sort(_flat(v) @ dirs, dim=0).values for v in (a, b))
    n = max(len(pa), len(pb))
    diff = _quantiles(pa, n) - _quantiles(pb, n)
    return float(diff.pow(2).mean().sqrt())


def assigned_components(samples: torch.Tensor, mixture: GaussianMixture, chunk: int = 4096) -> torch.Tensor:
    """argmax_k log w_k + log N(x; mu_k, C_k) per sample (the data density: alpha = 0, beta = 1)."""
    return mixture.data_log_probs(_flat(samples), chunk).argmax(1).cpu()


def _weight_tv(components: torch.Tensor, mixture: GaussianMixture) -> float:
    counts = torch.bincount(components, minlength=len(mixture.w)).to(torch.float64)
    return float(0.5 * (counts / len(components) - mixture.w.cpu()).abs().sum())


def weight_tv(samples: torch.Tensor, mixture: GaussianMixture) -> float:
    """(1/2) sum_k |n_k / n - w_k| with n_k the samples assigned to component k."""
    return _weight_tv(assigned_components(samples, mixture), mixture)


def mean_nll(samples: torch.Tensor, mixture: GaussianMixture) -> float:
    """mean_i -log p(x_i) under the mixture's exact density (nats per sample)."""
    return float(-mixture.log_density(_flat(samples)).mean())


def nll_baseline(model, sets: int = NLL_BASELINE_SETS, size: int = 2000, seed: int = NLL_BASELINE_SEED) -> float:
    """E[-log p(X)] estimated from ``sets`` sets of ``size`` exact samples (seeds ``seed``, ``seed + 1``, ...)."""
    return sum(mean_nll(model.exact_samples(size, seed + i), model.mixture) for i in range(sets)) / sets


class MixtureScorer:
    """Scores samples of an exact mixture model with fd, sw, weight_tv and nll_gap (the first is the primary)."""

    metrics = ("fd", "sw", "weight_tv", "nll_gap")

    def __init__(self, model, n: int, reference_seed: int = 10_000):
        self.model, self.mixture = model, model.mixture
        self.proj = projection(self.mixture.dim)
        self.dirs = directions(self.mixture.dim)
        self.reference_seed = reference_seed
        self.reference = model.exact_samples(n, reference_seed)
        self.baseline_nll = nll_baseline(model)

    def score(self, samples: torch.Tensor) -> dict[str, float]:
        """The metrics; weight_tv and nll_gap share one pass over the component densities (the d x K products
        that dominate at d = 4096)."""
        log_probs = self.mixture.data_log_probs(_flat(samples))
        return {"fd": mixture_fd(samples, self.mixture, self.proj),
                "sw": sliced_wasserstein(samples, self.reference, self.dirs),
                "weight_tv": _weight_tv(log_probs.argmax(1).cpu(), self.mixture),
                "nll_gap": float(-torch.logsumexp(log_probs, dim=1).mean()) - self.baseline_nll}

    def floors(self, n: int, seed: int = 20_000) -> dict[str, float]:
        """The metrics of n exact samples (seed ``seed``, independent of the reference set)."""
        return self.score(self.model.exact_samples(n, seed))

    def describe(self) -> str:
        where = f"{self.mixture.dim} raw coordinates" if self.proj is None else \
            f"a fixed random orthonormal projection to {self.proj.shape[0]} of the {self.mixture.dim} coordinates"
        return (f"fd: Fréchet distance to the mixture's exact mean and covariance in {where}; sw: sliced "
                f"Wasserstein-2 over {self.dirs.shape[1]} fixed directions to {len(self.reference)} exact samples "
                f"(seed {self.reference_seed}); weight_tv: total variation between the weights of the components "
                "the samples are assigned to (most likely under the data) and the true weights; nll_gap: mean "
                f"-log p(samples) minus E[-log p(X)] = {self.baseline_nll:.4g} (nats per sample, from "
                f"{NLL_BASELINE_SETS} x 2000 exact samples)")
