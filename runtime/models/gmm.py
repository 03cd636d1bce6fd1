"""Exact Gaussian-mixture "models": the benchmark where the sampler's error is the only error.

Data X ~ sum_k w_k N(mu_k, C_k) with low-rank-plus-diagonal covariances
C_k = s_k^2 I + Q_k diag(l_k^2) Q_k^T (Q_k: d x r with orthonormal columns; any s^2 I + U U^T has this form
by the SVD of U).  On a schedule I_t = alpha_t Z + beta_t X (Z ~ N(0, I)), given component k,

    I_t ~ N(beta mu_k, S_k),  S_k = alpha^2 I + beta^2 C_k = a_k I + Q_k diag(beta^2 l_k^2) Q_k^T,
    a_k = alpha^2 + beta^2 s_k^2,  e_kj = a_k + beta^2 l_kj^2 (S_k's eigenvalues in Q_k's directions).

With r = x - beta mu_k and p = Q_k^T r (Woodbury, matrix determinant lemma):

    g_k = S_k^-1 r = r / a_k + Q_k ((1/e_k - 1/a_k) p)
    log det S_k = (d - rank) log a_k + sum_j log e_kj,   r^T S_k^-1 r = |r|^2 / a_k + sum_j (1/e_kj - 1/a_kj) p_j^2
    E[X | I = x, k] = mu_k + beta C_k g_k = mu_k + beta (s_k^2 g_k + Q_k (l_k^2 p / e_k))
    E[Z | I = x, k] = alpha g_k,    grad log p_t(x | k) = -g_k

and the mixture's posterior weights pi_k(x) = softmax_k(log w_k + log N(x; beta mu_k, S_k)) give
eta_X = sum_k pi_k E[X | x, k], eta_Z = sum_k pi_k E[Z | x, k], score = -sum_k pi_k g_k, each finite at
both ends of the path (alpha = 0 or beta = 0).  The velocity is alpha' eta_Z + beta' eta_X.
Everything is computed in float64; only matrix products touch the d coordinates (x against the means and
the K r low-rank directions) and the outputs are assembled in one pass (see ``posterior``), so memory is
O(n d + n K r) and d = 4096 at batch 2000 runs on a CPU.

The named models are ``gmm64`` and ``gmm4096`` (:func:`load`); ``gmm:SEED[,dim=D][,components=K][,rank=R]``
(:func:`load_random`) is a random mixture built from SEED, for problems nobody tuned on.  Any of them is also a
noise-prediction network on a discrete diffusion schedule (:class:`DiscreteNoiseMixture`, by default Stable
Diffusion 1.x's: :data:`SD_CONFIG`), eps(x, k) = E[Z | x_k = x] at the schedule's abar(k), exact at any k.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import LazyflowError
from ...predictions import PREDICTIONS, check_prediction

__all__ = ["GaussianMixture", "ExactMixtureModel", "ConditionalMixtureModel", "DiscreteNoiseMixture", "mixture",
           "random_mixture", "load", "load_random", "load_any", "parse_random", "NAMES", "PREDICTIONS", "RANDOM_KIND",
           "RANDOM_DEFAULTS", "SD_CONFIG"]



@dataclass(frozen=True)
class GaussianMixture:
    """sum_k w_k N(mu_k, s_k^2 I + Q_k diag(l_k^2) Q_k^T), float64: w (K,), mu (K, d), s (K,), Q (K, d, r), l (K, r)."""

    w: torch.Tensor
    mu: torch.Tensor
    s: torch.Tensor
    Q: torch.Tensor
    l: torch.Tensor

    @property
    def dim(self) -> int:
        return self.mu.shape[1]

    def to(self, device) -> "GaussianMixture":
        return GaussianMixture(*(v.to(device) for v in (self.w, self.mu, self.s, self.Q, self.l)))

    def mean(self) -> torch.Tensor:
        """E[X] = sum_k w_k mu_k."""
        return self.w @ self.mu

    def covariance(self, projection: torch.Tensor | None = None) -> torch.Tensor:
        """Cov[P X] = sum_k w_k (P C_k P^T + P mu_k mu_k^T P^T) - P m m^T P^T for a (p, d) ``projection`` P
        (identity if None); never forms a d x d matrix when P has fewer rows."""
        P = projection if projection is not None else torch.eye(self.dim, dtype=self.mu.dtype, device=self.mu.device)
        Pmu = self.mu @ P.T                                        # (K, p)
        PQ = torch.einsum("pd,kdr->kpr", P, self.Q) * self.l[:, None, :]
        PPt = P @ P.T
        cov = sum(self.w[k] * (self.s[k] ** 2 * PPt + PQ[k] @ PQ[k].T + torch.outer(Pmu[k], Pmu[k]))
                  for k in range(len(self.w)))
        m = self.w @ Pmu
        return cov - torch.outer(m, m)

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n exact samples (n, d) float64, their components (n,)): X = mu_k + s_k eps + Q_k (l_k * xi)."""
        g = torch.Generator().manual_seed(int(seed))
        k = torch.multinomial(self.w.cpu(), n, replacement=True, generator=g)
        eps = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        xi = torch.randn(n, self.Q.shape[2], generator=g, dtype=torch.float64)
        x = torch.empty(n, self.dim, dtype=torch.float64, device=self.mu.device)
        for j in range(len(self.w)):   # one component at a time: no (n, d, r) gather
            rows = (k == j).nonzero()[:, 0]
            e, z = eps[rows].to(self.mu.device), xi[rows].to(self.mu.device)
            x[rows.to(self.mu.device)] = self.mu[j] + self.s[j] * e + (self.l[j] * z) @ self.Q[j].T
        return x, k

    def _terms(self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor):
        """Per sample and component: log w_k + log N(x; beta mu_k, S_k) (n, K), 1/a_k (n, K), p_k (n, K, r),
        1/e_k - 1/a_k (n, K, r) and 1/e_k (n, K, r).  Only matmuls touch d: |r|^2 = |x|^2 - 2 beta x.mu_k +
        beta^2 |mu_k|^2 and p_k = Q_k^T x - beta Q_k^T mu_k."""
        d, K, rank = self.dim, len(self.w), self.Q.shape[2]
        b2 = beta**2                                               # (n, 1)
        a = alpha**2 + b2 * self.s**2                              # (n, K)
        e = a[:, :, None] + b2[:, :, None] * self.l**2             # (n, K, r)
        xQ = (x @ self.Q.permute(1, 0, 2).reshape(d, K * rank)).reshape(-1, K, rank)
        muQ = torch.einsum("kd,kdr->kr", self.mu, self.Q)
        p = xQ - beta[:, :, None] * muQ                            # (n, K, r)
        r2 = (x * x).sum(1, keepdim=True) - 2 * beta * (x @ self.mu.T) + b2 * (self.mu**2).sum(1)
        inv_a, inv_e = 1 / a, 1 / e
        c = inv_e - inv_a[:, :, None]
        quad = r2 * inv_a + (c * p * p).sum(2)
        logdet = (d - rank) * torch.log(a) + torch.log(e).sum(2)
        log_p = torch.log(self.w) - 0.5 * (d * math.log(2 * math.pi) + logdet + quad)
        return log_p, inv_a, p, c, inv_e

    def log_probs(self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """(n, K): log w_k + log N(x; beta mu_k, alpha^2 I + beta^2 C_k) for x (n, d), alpha and beta (n, 1)."""
        return self._terms(x, alpha, beta)[0]

    def data_log_probs(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """(n, K): log w_k + log N(x; mu_k, C_k) of the data (alpha = 0, beta = 1) for x (n, d), in chunks."""
        x = x.reshape(len(x), -1).to(device=self.mu.device, dtype=torch.float64)
        out = []
        for start in range(0, len(x), chunk):
            part = x[start:start + chunk]
            ones = torch.ones(len(part), 1, dtype=torch.float64, device=x.device)
            out.append(self.log_probs(part, 0 * ones, ones))
        return torch.cat(out) if out else x.new_zeros(0, len(self.w))

    def log_density(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """(n,): log p(x) = logsumexp_k (log w_k + log N(x; mu_k, C_k)) of the data for x (n, d), in chunks."""
        return torch.logsumexp(self.data_log_probs(x, chunk), dim=1)

    def posterior(self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, cx: torch.Tensor,
                  cg: torch.Tensor) -> torch.Tensor:
        """cx eta_X + cg G at I = x, where G = sum_k pi_k g_k (minus the score; eta_Z = alpha G) and cx, cg
        are (n, 1).  Every term is x times a scalar, a combination of the means or of the Q_k's columns:

            G     = x sum_k pi_k/a_k - beta sum_k (pi_k/a_k) mu_k + sum_k Q_k (pi_k c_k p_k)
            eta_X = sum_k pi_k mu_k + beta (x sum_k pi_k s_k^2/a_k - beta sum_k (pi_k s_k^2/a_k) mu_k
                    + sum_k Q_k (pi_k (s_k^2 c_k + l_k^2/e_k) p_k))   with c_k = 1/e_k - 1/a_k."""
        log_p, inv_a, p, c, inv_e = self._terms(x, alpha, beta)
        pi = torch.softmax(log_p, dim=1)                           # (n, K)
        s2 = self.s**2
        w0, w1 = pi * inv_a, pi * s2 * inv_a
        h0 = pi[:, :, None] * c * p
        h1 = pi[:, :, None] * (s2[:, None] * c + self.l**2 * inv_e) * p
        scale = cx * beta * w1.sum(1, keepdim=True) + cg * w0.sum(1, keepdim=True)
        means = cx * (pi - beta**2 * w1) - cg * beta * w0
        low = (cx * beta)[:, :, None] * h1 + cg[:, :, None] * h0
        d, K, rank = self.dim, len(self.w), self.Q.shape[2]
        return x * scale + means @ self.mu + low.reshape(-1, K * rank) @ self.Q.permute(1, 0, 2).reshape(d, K * rank).T


class ExactMixtureModel(nn.Module):
    """model(x, t) for mixture data on a ``source`` schedule (time t of that schedule), returning the
    ``prediction``: velocity alpha' eta_Z + beta' eta_X, x (eta_X), noise (eta_Z) or score (-sum pi_k g_k).

    Computed in float64 and returned in x's dtype; inputs of any shape (n, *data_shape)."""

    def __init__(self, mixture: GaussianMixture, data_shape: tuple[int, ...], name: str, source="linear",
                 prediction: str = "velocity"):
        super().__init__()
        from ..core.schedule import load_schedule

        check_prediction(prediction)
        if math.prod(data_shape) != mixture.dim:
            raise LazyflowError(f"data shape {data_shape} does not have the mixture's {mixture.dim} coordinates")
        self.mixture, self.data_shape, self.name = mixture, tuple(data_shape), name
        self.source, self.prediction = load_schedule(source), prediction
        self.metadata = {"schedule": self.source.name, "prediction": prediction, "exact": True}

    def view(self, source=None, prediction: str | None = None) -> "ExactMixtureModel":
        """The same mixture seen through another source schedule and/or prediction."""
        return ExactMixtureModel(self.mixture, self.data_shape, self.name, self.source if source is None else source,
                                 prediction or self.prediction)

    def to(self, *args, **kwargs):   # a device move only: the mixture stays in float64
        device = torch.empty(0).to(*args, **kwargs).device
        self.mixture = self.mixture.to(device)
        return self

    def exact_samples(self, n: int, seed: int) -> torch.Tensor:
        """n exact draws of the data (float32, shape (n, *data_shape)), a function of (n, seed) only."""
        return self.mixture.sample(n, seed)[0].float().reshape(n, *self.data_shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        tt = t.to(torch.float64).reshape(-1).expand(x.shape[0])
        v = self.source.values(tt)
        alpha, beta = v.alpha[:, None], v.beta[:, None]
        one, zero = torch.ones_like(alpha), torch.zeros_like(alpha)
        cx, cg = {"x": (one, zero), "noise": (zero, alpha), "score": (zero, -one),
                  "velocity": (v.d_beta[:, None], v.d_alpha[:, None] * alpha)}[self.prediction]
        return self.mixture.posterior(flat, alpha, beta, cx, cg).to(x.dtype).reshape(x.shape)


#: Stable Diffusion 1.x's scheduler config (scaled_linear betas 0.00085 .. 0.012 on 1,000 training steps, noise
#: prediction): the discrete schedule of the noise-prediction mixtures and of their diffusers peers
SD_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "prediction_type": "epsilon", "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}


class DiscreteNoiseMixture(nn.Module):
    """eps(x, k): the mixture of ``base`` as a noise-prediction network on the discrete schedule of the diffusers
    scheduler ``config`` (default :data:`SD_CONFIG`), called as diffusers calls a UNet: ``timestep`` (n,) a training
    timestep k in [0, N - 1], continuous between steps.  eps = E[Z | x] at alpha = sqrt(1 - abar(k)),
    beta = sqrt(abar(k)) (``base`` seen through the noise prediction on the schedule, at its time t(k)), exact at
    any k: abar(k) is the schedule's own interpolant (:mod:`lazyflow.runtime.core.discrete_schedule`)."""

    def __init__(self, base: ExactMixtureModel, config: dict | None = None):
        super().__init__()
        from ..core.discrete_schedule import schedule_of_config

        self.config = dict(SD_CONFIG if config is None else config)
        self.schedule = schedule_of_config(self.config)
        self.base, self.noise = base, base.view(self.schedule, "noise")
        self.mixture, self.data_shape, self.name = base.mixture, base.data_shape, base.name

    def to(self, *args, **kwargs):   # a device move only, as the base's
        self.base.to(*args, **kwargs)
        self.noise.to(*args, **kwargs)
        self.mixture = self.base.mixture
        return self

    def exact_samples(self, n: int, seed: int) -> torch.Tensor:
        """The base's exact draws of the data."""
        return self.base.exact_samples(n, seed)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        from ..core.discrete_schedule import time_of_timestep

        return self.noise(x, time_of_timestep(self.schedule, timestep.reshape(-1).to(torch.float64)))


class ConditionalMixtureModel(ExactMixtureModel):
    """model(x, t, y): class-conditional mixture data, label y's data the mixture of the shared components with
    weights ``class_weights[y]`` (L, K), so that E[X | y] = class_weights[y] @ mu differs per label.  Label
    ``L`` (the null class) is the unconditional mixture (weights ``mixture.w``), as label dropout trains it;
    so ``guided(model, s, null={"y": L})`` is an exact guided model.  Same predictions and source schedules
    as :class:`ExactMixtureModel`."""

    def __init__(self, mixture: GaussianMixture, class_weights: torch.Tensor, data_shape: tuple[int, ...], name: str,
                 source="linear", prediction: str = "velocity"):
        super().__init__(mixture, data_shape, name, source, prediction)
        weights = class_weights.to(torch.float64)
        self.class_weights = weights / weights.sum(1, keepdim=True)
        self.num_classes = len(weights)

    def view(self, source=None, prediction: str | None = None) -> "ConditionalMixtureModel":
        return ConditionalMixtureModel(self.mixture, self.class_weights, self.data_shape, self.name,
                                       self.source if source is None else source, prediction or self.prediction)

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        self.class_weights = self.class_weights.to(self.mixture.mu.device)
        return self

    def of_label(self, y: int) -> GaussianMixture:
        """The data of label ``y`` (``num_classes``: the unconditional mixture)."""
        m = self.mixture
        w = m.w if y == self.num_classes else self.class_weights[y]
        return GaussianMixture(w, m.mu, m.s, m.Q, m.l)

    def class_mean(self, y: int) -> torch.Tensor:
        """E[X | y] (shape data_shape)."""
        return self.of_label(y).mean().reshape(self.data_shape)

    def exact_samples(self, n: int, seed: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """n exact draws, sample i of label ``labels[i]`` (default i mod num_classes); float32."""
        labels = torch.arange(n) % self.num_classes if labels is None else labels.reshape(-1).cpu()
        out = torch.empty(n, self.mixture.dim, dtype=torch.float64)
        for y in labels.unique().tolist():
            rows = (labels == y).nonzero()[:, 0]
            out[rows] = self.of_label(y).sample(len(rows), seed * 1000 + y)[0].cpu()
        return out.float().reshape(n, *self.data_shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        labels = torch.full((x.shape[0],), self.num_classes) if y is None else y.reshape(-1).expand(x.shape[0]).cpu()
        out = torch.empty_like(x)
        tt = t.reshape(-1).expand(x.shape[0])
        for label in labels.unique().tolist():
            rows = (labels == label).nonzero()[:, 0].to(x.device)
            part = ExactMixtureModel(self.of_label(label), self.data_shape, self.name, self.source, self.prediction)
            out[rows] = part(x[rows], tt[rows])
        return out


def conditional_mixture(seed: int, classes: int = 4, dim: int = 16, components: int = 6, rank: int = 2,
                        source="linear", prediction: str = "velocity") -> ConditionalMixtureModel:
    """A random class-conditional mixture (:class:`ConditionalMixtureModel`): :func:`random_mixture` components
    and per class weights proportional to u^3, u ~ U(0, 1) from ``seed`` (each class favours a few components)."""
    base = random_mixture(seed, dim=dim, components=components, rank=rank)
    g = torch.Generator().manual_seed(int(seed) + 7)
    weights = torch.rand(classes, components, generator=g, dtype=torch.float64) ** 3 + 1e-3
    return ConditionalMixtureModel(base, weights, (dim,), f"conditional-gmm:{seed}", source, prediction)


def mixture(dim: int, rank: int, seed: int, weights=(0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05),
            widths=(0.3, 0.05, 0.15, 0.4, 0.08, 0.2, 0.05), spread: tuple[float, ...] = (0.25, 0.12, 0.06, 0.03)) -> GaussianMixture:
    """A fixed mixture from ``seed``: component k has weight ``weights[k]``, isotropic width ``widths[k]``
    and ``rank`` low-rank directions with variances l_kj^2 = spread[j mod 4] * d * u (u ~ U(0.5, 1.5)); the
    means (Gaussian, centred so E[X] = 0) and low-rank directions are scaled by one factor c so that the
    average variance per coordinate, tr Cov[X] / d = sum_k w_k (s_k^2 + c^2 (|mu_k|^2 + |l_k|^2) / d), is 1."""
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    s = torch.tensor(widths, dtype=torch.float64)
    K = len(w)
    mu = torch.randn(K, dim, generator=g, dtype=torch.float64)
    mu = mu - w @ mu
    Q = torch.linalg.qr(torch.randn(K, dim, rank, generator=g, dtype=torch.float64)).Q
    frac = torch.tensor([spread[j % len(spread)] for j in range(rank)], dtype=torch.float64)
    l2 = frac * dim * (0.5 + torch.rand(K, rank, generator=g, dtype=torch.float64))
    structured = (w * ((mu**2).sum(1) + l2.sum(1))).sum() / dim
    c2 = (1 - (w * s**2).sum()) / structured
    return GaussianMixture(w, mu * c2.sqrt(), s, Q, (l2 * c2).sqrt())


#: the named exact models: data shape, mixture recipe (dimension, rank, seed)
NAMES = {"gmm64": ((64,), (64, 4, 64)), "gmm4096": ((4, 32, 32), (4096, 16, 4096))}


def load(name: str, source="linear", prediction: str = "velocity") -> ExactMixtureModel:
    """``gmm64``: d = 64, samples of shape (64,), 7 components of rank 4; ``gmm4096``: d = 4096 in the
    SiT latent's shape (4, 32, 32), 7 components of rank 16.  Weights 0.3 ... 0.05, widths 0.4 ... 0.05."""
    if name not in NAMES:
        raise LazyflowError(f"no exact mixture {name!r} (known: {', '.join(NAMES)})")
    shape, (dim, rank, seed) = NAMES[name]
    return ExactMixtureModel(_cached_mixture(dim, rank, seed), shape, name, source, prediction)


_CACHE: dict[tuple, GaussianMixture] = {}


def _cached_mixture(dim: int, rank: int, seed: int) -> GaussianMixture:
    key = (dim, rank, seed)
    if key not in _CACHE:
        _CACHE[key] = mixture(dim, rank, seed)
    return _CACHE[key]


#: the model kind of the random mixtures (``gmm:SEED``) and its options' defaults
RANDOM_KIND = "gmm"
RANDOM_DEFAULTS = {"dim": 32, "components": 6, "rank": 3}


def random_mixture(seed: int, dim: int = 32, components: int = 6, rank: int = 3) -> GaussianMixture:
    """A random mixture, a function of its arguments alone: weights w_k proportional to 0.25 + u_k and
    widths s_k = 0.05 * 8^v_k (log-uniform in [0.05, 0.4]) with u, v ~ U(0, 1) from a generator seeded by
    ``seed`` (Python's ``random``, seeded with the text ``gmm:SEED``), then :func:`mixture` (means, ``rank``
    low-rank directions, overall scale: tr Cov[X] / d = 1) from the same ``seed``."""
    if dim < 1 or components < 1 or not 1 <= rank <= dim:
        raise LazyflowError(f"a random mixture needs dim >= 1, components >= 1 and 1 <= rank <= dim; got dim {dim}, "
                            f"components {components}, rank {rank}")
    rng = random.Random(f"gmm:{int(seed)}")
    weights = tuple(0.25 + rng.random() for _ in range(components))
    widths = tuple(0.05 * 8 ** rng.random() for _ in range(components))
    return mixture(dim, rank, int(seed), weights=weights, widths=widths)


def parse_random(spec: str, **options: int | None) -> tuple[int, dict[str, int]]:
    """(seed, {dim, components, rank}) of ``gmm:SEED[,dim=D][,components=K][,rank=R]``; ``options`` (the
    model kind's options, None where not given) fill in what the name leaves out, else
    :data:`RANDOM_DEFAULTS`.  A value given both ways must agree."""
    head, _, tail = str(spec).partition(":")
    seed_text, *pairs = tail.split(",")
    usage = f"--model {RANDOM_KIND}:SEED[,dim=D][,components=K][,rank=R] (e.g. {RANDOM_KIND}:101,dim=64)"
    if head != RANDOM_KIND or not seed_text.strip().isdigit():
        raise LazyflowError(f"{spec!r}: a random mixture is named {usage}")
    named: dict[str, int] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key.strip() not in RANDOM_DEFAULTS or not value.strip().isdigit():
            raise LazyflowError(f"{spec!r}: {pair!r} is not one of dim=, components=, rank= with an integer; {usage}")
        named[key.strip()] = int(value)
    settings = dict(RANDOM_DEFAULTS)
    for key in RANDOM_DEFAULTS:
        given, option = named.get(key), options.get(key)
        if given is not None and option is not None and given != option:
            raise LazyflowError(f"{spec!r}: {key}={given} in the name but {key}={option} as an option")
        settings[key] = next((v for v in (given, option) if v is not None), settings[key])
    return int(seed_text), settings


def load_random(spec: str, source="linear", prediction: str = "velocity", **options: int | None) -> ExactMixtureModel:
    """The random mixture ``gmm:SEED[,dim=D][,components=K][,rank=R]`` (:func:`random_mixture`; defaults
    :data:`RANDOM_DEFAULTS`), samples of shape (dim,), named by its full recipe when it differs from them."""
    seed, settings = parse_random(spec, **options)
    extra = "".join(f",{k}={v}" for k, v in settings.items() if v != RANDOM_DEFAULTS[k])
    key = ("random", seed, *settings.values())
    if key not in _CACHE:
        _CACHE[key] = random_mixture(seed, **settings)
    return ExactMixtureModel(_CACHE[key], (settings["dim"],), f"{RANDOM_KIND}:{seed}{extra}", source, prediction)


def load_any(spec: str, source="linear", prediction: str = "velocity", **options: int | None) -> ExactMixtureModel:
    """A named mixture (:data:`NAMES`, no options) or a random one ``gmm:SEED[,...]`` (:func:`load_random`)."""
    if spec in NAMES:
        given = [f"{k}={v}" for k, v in options.items() if v is not None]
        if given:
            raise LazyflowError(f"{spec} is a fixed mixture: {', '.join(given)} apply to {RANDOM_KIND}:SEED only")
        return load(spec, source, prediction)
    if spec.partition(":")[0] != RANDOM_KIND:
        raise LazyflowError(f"{spec!r} is not an exact mixture: {', '.join(NAMES)} or {RANDOM_KIND}:SEED[,dim=D]"
                            "[,components=K][,rank=R]")
    return load_random(spec, source, prediction, **options)
