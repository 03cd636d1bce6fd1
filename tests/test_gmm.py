"""The exact Gaussian-mixture models and their metrics: the Woodbury formulas against dense linear algebra,
the velocity against moment identities of the path, sampling against exact samples, and the bench rows'
sample_args against ``lazyflow sample`` bit for bit."""
import math

import numpy as np
import pytest
import torch

from lazyflow.cli import main
from lazyflow.runtime.models import gmm
from lazyflow.runtime.evaluation.bench import OurMethod, run_quality_bench
from lazyflow.runtime.evaluation.gmm_metrics import (MixtureScorer, directions, mixture_fd, projection, sliced_wasserstein,
                                          weight_tv)
from lazyflow.runtime.core.sampler import sample
from lazyflow.runtime.core.schedule import load_schedule

from exact import gaussian_velocity

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_mixture(seed: int = 0, d: int = 6, K: int = 3, rank: int = 2) -> gmm.GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(K, d, rank, generator=g, dtype=torch.float64)).Q
    return gmm.GaussianMixture(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64),
                               torch.randn(K, d, generator=g, dtype=torch.float64) * 2,
                               torch.tensor([0.5, 0.05, 0.2], dtype=torch.float64), Q,
                               1 + torch.rand(K, rank, generator=g, dtype=torch.float64))


def dense(mix: gmm.GaussianMixture, x, alpha: float, beta: float):
    """(eta_X, eta_Z, score, log p_k) with explicit covariance matrices and torch.linalg."""
    d = mix.dim
    covs = [mix.s[k] ** 2 * torch.eye(d, dtype=torch.float64) + mix.Q[k] @ torch.diag(mix.l[k] ** 2) @ mix.Q[k].T
            for k in range(len(mix.w))]
    logs, ex, ez, sc = [], [], [], []
    for k, C in enumerate(covs):
        S = alpha**2 * torch.eye(d, dtype=torch.float64) + beta**2 * C
        dist = torch.distributions.MultivariateNormal(beta * mix.mu[k], covariance_matrix=S)
        logs.append(torch.log(mix.w[k]) + dist.log_prob(x))
        g = torch.linalg.solve(S, (x - beta * mix.mu[k]).T).T
        ex.append(mix.mu[k] + beta * g @ C)
        ez.append(alpha * g)
        sc.append(-g)
    logp = torch.stack(logs, 1)
    pi = torch.softmax(logp, 1)[:, :, None]
    return [(pi * torch.stack(v, 1)).sum(1) for v in (ex, ez, sc)] + [logp]


@pytest.mark.parametrize("source", ["linear", "vp"])
def test_woodbury_formulas_match_dense_covariances(source):
    mix = small_mixture()
    sched = load_schedule(source)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for t in (0.0, 0.3, 0.7, 0.95, 1.0):
        v = sched.values(torch.tensor([t], dtype=torch.float64))
        alpha, beta, da, db = (float(u[0]) for u in (v.alpha, v.beta, v.d_alpha, v.d_beta))
        eta_x, eta_z, score, logp = dense(mix, x, alpha, beta)
        ones = torch.ones(len(x), 1, dtype=torch.float64)
        assert torch.allclose(mix.log_probs(x, alpha * ones, beta * ones), logp, rtol=1e-10, atol=1e-8)
        expected = {"x": eta_x, "noise": eta_z, "score": score, "velocity": da * eta_z + db * eta_x}
        for prediction, want in expected.items():
            model = gmm.ExactMixtureModel(mix, (6,), "small", source, prediction)
            got = model(x, torch.full((len(x),), t, dtype=torch.float64))
            assert torch.allclose(got, want, rtol=1e-8, atol=1e-8), (t, prediction)
        assert torch.allclose(alpha * eta_z + beta * eta_x, x, atol=1e-9)   # I = alpha eta_Z + beta eta_X


def test_log_density_is_the_logsumexp_of_the_dense_component_densities():
    mix = small_mixture()
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    logp = dense(mix, x, 0.0, 1.0)[3]
    assert torch.allclose(mix.log_density(x, chunk=7), torch.logsumexp(logp, 1), rtol=1e-10, atol=1e-9)


def test_single_gaussian_matches_the_closed_form_velocity():
    var = 0.7
    one = gmm.GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 5, dtype=torch.float64),
                              torch.full((1,), math.sqrt(var), dtype=torch.float64),
                              torch.eye(5, 1, dtype=torch.float64)[None], torch.zeros(1, 1, dtype=torch.float64))
    model = gmm.ExactMixtureModel(one, (5,), "one")
    x, t = torch.randn(40, 5, dtype=torch.float64), torch.rand(40, dtype=torch.float64)
    assert torch.allclose(model(x, t), gaussian_velocity(var)(x, t), rtol=1e-10, atol=1e-10)


def test_velocity_satisfies_the_moment_identities_of_the_path():
    """For I_t = alpha Z + beta X: E[v(I_t)] = beta' E[X] and E[<I_t, v(I_t)>] = (1/2) d/dt E|I_t|^2, the
    latter by a finite difference of the closed form alpha^2 d + beta^2 E|X|^2 (vp source: non-trivial)."""
    base = gmm.load("gmm64")
    mix = gmm.GaussianMixture(base.mixture.w, base.mixture.mu + 0.5, base.mixture.s, base.mixture.Q, base.mixture.l)
    model = gmm.ExactMixtureModel(mix, (64,), "shifted", "vp", "velocity")
    sched, n, d = load_schedule("vp"), 40_000, 64
    second = float(torch.trace(mix.covariance()) + mix.mean().pow(2).sum())
    path = lambda s: float(sched.values(torch.tensor([s], dtype=torch.float64)).alpha[0] ** 2 * d
                           + sched.values(torch.tensor([s], dtype=torch.float64)).beta[0] ** 2 * second)
    x = mix.sample(n, seed=3)[0]
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for t in (0.2, 0.5, 0.8):
        v = sched.values(torch.tensor([t], dtype=torch.float64))
        i_t = v.alpha * z + v.beta * x
        vel = model(i_t, torch.full((n,), t, dtype=torch.float64))
        mean_err = (vel.mean(0) - v.d_beta * mix.mean()).abs().max()
        assert mean_err < 5 * vel.std(0).max() / math.sqrt(n), t
        inner = (i_t * vel).sum(1)
        fd = (path(t + 1e-5) - path(t - 1e-5)) / 4e-5
        assert abs(inner.mean() - fd) < 5 * inner.std() / math.sqrt(n), t


def test_named_models_are_fixed_unit_scale_and_varied():
    for name, d in (("gmm64", 64), ("gmm4096", 4096)):
        model = gmm.load(name)
        mix = model.mixture
        assert math.prod(model.data_shape) == d and mix.dim == d
        assert float(torch.trace(mix.covariance(projection(d, 64) if d > 64 else None))) / 64 == pytest.approx(1, abs=0.1)
        assert mix.w.min() <= 0.05 and mix.s.min() <= 0.05 and mix.s.max() >= 0.3
        assert torch.equal(model.exact_samples(5, 1), gmm.load(name).exact_samples(5, 1))
    assert gmm.load("gmm4096").data_shape == (4, 32, 32)


def test_metrics_have_their_exact_values():
    mix = gmm.load("gmm64").mixture
    a = gmm.load("gmm64").exact_samples(300, 0)
    u = directions(64)
    assert sliced_wasserstein(a, a, u) == 0
    shift = torch.linspace(-1, 1, 64)
    assert sliced_wasserstein(a + shift, a, u) == pytest.approx(float((shift.double() @ u).pow(2).mean().sqrt()),
                                                                rel=1e-6)
    one = a[mix.log_probs(a.double(), torch.zeros(300, 1, dtype=torch.float64),
                          torch.ones(300, 1, dtype=torch.float64)).argmax(1) == 0]
    assert weight_tv(one, mix) == pytest.approx(1 - float(mix.w[0]))
    big = gmm.load("gmm64").exact_samples(20_000, 1)
    assert weight_tv(big, mix) < 0.02 and mixture_fd(big, mix) < 0.05
    assert mixture_fd(big * 1.1, mix) > 5 * mixture_fd(big, mix)
    P = projection(4096)
    assert P.shape == (256, 4096) and torch.allclose(P @ P.T, torch.eye(256, dtype=torch.float64), atol=1e-10)


@pytest.mark.slow   # 3 x 1-3 s: converged runs per prediction
@pytest.mark.parametrize("prediction", ["x", "noise", "velocity"])
def test_sampling_the_exact_model_reproduces_exact_samples(prediction):
    """Many steps on the exact model reach the floor; one Euler step does not (the test can fail).  A noise
    prediction cannot give eta_X at t = 0 (beta = 0): that run starts at t = 1e-3."""
    model = gmm.load("gmm64", prediction=prediction)
    n = 2000
    scorer = MixtureScorer(model, n)
    floor = [scorer.floors(n, seed) for seed in (1, 2, 3)]
    start = 1e-3 if prediction == "noise" else 0.0
    good = scorer.score(sample(model, (n, 64), schedule="linear", integrator="heun", prediction=prediction, seed=0,
                               steps=40, grid=torch.linspace(start, 1, 41).tolist()))
    bad = scorer.score(sample(model, (n, 64), schedule="linear", integrator="euler", prediction=prediction, seed=0,
                              steps=1, grid=[start, 1.0]))
    for key in scorer.metrics:
        worst = max(f[key] for f in floor)
        assert good[key] < 1.5 * worst, (key, good, floor)
        assert bad[key] > 2 * worst, (key, bad, floor)


def test_predictions_agree_along_a_sampler_run():
    grid = torch.linspace(1e-3, 1, 21).tolist()   # the noise prediction has no eta_X at t = 0
    runs = [sample(gmm.load("gmm64", prediction=p), (64, 64), schedule="vp", integrator="multistep", steps=20, grid=grid,
                   prediction=p, seed=2) for p in ("velocity", "x", "noise")]
    assert torch.allclose(runs[0], runs[1], atol=1e-4) and torch.allclose(runs[0], runs[2], atol=1e-4)


@pytest.mark.slow   # 7 s: a bench run and a sample per row
def test_bench_rows_reproduce_bit_for_bit_with_lazyflow_sample(tmp_path, capsys):
    methods = [OurMethod("linear", "heun", "uniform"), OurMethod("vp-sde", "exp-midpoint", "logsnr"),
               OurMethod("pointmass", "midpoint", "logsnr", "denoise"),
               OurMethod("linear-sde", "multistep-pc", "uniform", None, 0.5)]   # a weaker diffusion
    for model_name, prediction in (("gmm64", "x"), ("digits", None)):
        seen = []
        result = run_quality_bench(model_name, [3, 4], n=6, seed=7, include_peers=False, methods=methods,
                                   prediction=prediction, log=lambda *a: None,
                                   on_samples=lambda row, x: seen.append((row, x.clone())))
        assert len(seen) == len(result["rows"]) + 2 == 2 * len(methods) + 2   # + the two references
        for row, x in seen[:3] + seen[6:7] + seen[-1:]:
            out = tmp_path / "x.npy"
            assert main(["sample", *row.sample_args, "--out", str(out), "--force"]) == 0, row
            again = np.load(out)
            assert again.dtype == np.float32 and np.array_equal(again, x.numpy()), row.sample_args
        if prediction:
            assert "--prediction" in result["rows"][0]["sample_args"] and result["floors"]["fd"]["sets"] >= 3
    capsys.readouterr()


def test_sample_command_on_exact_models(tmp_path, capsys):
    out = tmp_path / "g.npy"
    assert main(["sample", "--model", "gmm64", "--source", "vp", "--prediction", "x", "--schedule", "linear",
                 "--steps", "4", "--n", "3", "--out", str(out)]) == 0
    assert np.load(out).shape == (3, 64)
    assert main(["bench", "--model", "digits", "--prediction", "x", "--nfe", "2", "--n", "10"]) == 2
    assert "exact model" in capsys.readouterr().err
    assert main(["bench", "--model", "gmm64", "--metric", "nope", "--nfe", "2", "--n", "10"]) == 2
    assert "weight_tv" in capsys.readouterr().err


def test_goals_markdown_checks_the_goals_and_calls_ties():
    from lazyflow.runtime.evaluation.bench import goals_markdown

    def row(method, peer, sde, budget, fd, **extra):
        return {"method": method, "peer": peer, "stochastic": sde, "budget": budget, "nfe": budget, "fd": fd, **extra}

    result = {"nfe_budgets": [4, 8], "references": [{"kind": "ode", "fd": 2.0}, {"kind": "sde", "fd": 1.0}],
              "rows": [row("a", False, False, 4, 3.0), row("p", True, False, 4, 3.1), row("s", False, True, 4, 2.9),
                       row("q", True, True, 4, 5.0), row("a", False, False, 8, 2.3), row("p", True, False, 8, 3.0),
                       row("s", False, True, 8, 1.05), row("q", True, True, 8, 1.5)],
              "tuned_rows": [row("t", False, False, 8, 2.1, tuned=True)]}
    text = goals_markdown(result)
    assert "| 4 | 3.000 a | 3.100 p | tie (-3%) |" in text
    assert "deterministic 20% below the best deterministic peer: missed" in text
    assert "4 NFE, stochastic at or below the best deterministic peer: met (2.900 against 3.100)" in text
    assert "8 NFE, ODE within 10% of its converged reference: met (2.100 against 2.000)" in text   # the tuned row
    assert "2.100 t (tuned)" in text and "30% lower" in text
    assert "8 NFE, SDE within 10% of its converged reference: met" in text
