"""Data frames on conditional models (runtime/core/data_stats.py, runtime/core/data_frame.py): statistics per
label (ConditionalStats) and the mean read from the first call (DataStats.first_call_mean), each exact where
it claims to be, on exact conditional models in float64."""
from __future__ import annotations

import pytest
import torch

from lazyflow import DataStats, LazyflowError, sample
from lazyflow.runtime.core.data_stats import ConditionalStats, Directions
from lazyflow.runtime.models.gmm import conditional_mixture
from lazyflow.runtime.models.guidance import guided

from test_data_frame import gaussian

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

F64 = torch.float64
ODE_FRAMES = ("data-euler", "data-multistep", "data-multistep-pc", "data-multistep3-pc")


def first_eta(model, n, stats, labels, schedule="linear", integrator="data-multistep"):
    """The eta_X the sampler holds at its first step (the callback's view), and the samples."""
    seen = {}
    x = sample(model, (n, stats.data_shape[0]), schedule=schedule, integrator=integrator, steps=3, dtype=F64,
               data_stats=stats, model_kwargs={"y": labels}, callback=lambda info: seen.setdefault(info.step, info.eta_x))
    return seen[0], x


@pytest.mark.parametrize("schedule", ["linear", "vp"])
def test_the_first_call_gives_each_samples_conditional_mean_exactly(schedule):
    model = conditional_mixture(3, classes=4, dim=16)
    labels = torch.arange(24) % 4
    eta, _ = first_eta(model, 24, DataStats.isotropic((16,)), labels, schedule)
    means = torch.stack([model.class_mean(int(y)) for y in labels])
    assert (eta - means).abs().max() < 1e-10
    assert (means[0] - means[1]).abs().max() > 0.1          # the labels' means differ: a global mean would be wrong


def test_the_first_call_gives_the_guided_mean():
    """Guidance mixes velocities, so at snr = 0 it mixes means: E_null + s (E[X | y] - E_null)."""
    model = conditional_mixture(5, classes=3, dim=8)
    labels = torch.arange(12) % 3
    eta, _ = first_eta(guided(model, 2.5, null={"y": 3}), 12, DataStats.isotropic((8,)), labels)
    null = model.class_mean(3)
    expected = torch.stack([null + 2.5 * (model.class_mean(int(y)) - null) for y in labels])
    assert (eta - expected).abs().max() < 1e-10


def gaussian_of(mu: torch.Tensor, stats: DataStats):
    """The exact linear-schedule velocity of N(mu, Sigma), Sigma from ``stats``' variances (and eigenvectors),
    and its flow map z -> mu + Sigma^(1/2) z."""
    basis = stats.basis if stats.basis is not None else torch.eye(len(mu), dtype=F64)
    sigma = basis @ torch.diag(stats.var) @ basis.T
    root = basis @ torch.diag(stats.var.sqrt()) @ basis.T
    eye = torch.eye(len(mu), dtype=F64)

    def model(x, t):
        tt = t.to(F64).reshape(-1, 1, 1)
        c = (1 - tt) ** 2 * eye + tt**2 * sigma
        return mu + ((tt * sigma - (1 - tt) * eye) @ torch.linalg.solve(c, (x - tt[:, :, 0] * mu)[:, :, None]))[:, :, 0]

    return model, (lambda z: mu + z @ root)


def per_label_gaussian(d: int, labels: int, kind: str, shared_covariance: bool = False):
    """Data N(mu_y, Sigma_y) per label y (one Sigma for all with ``shared_covariance``): the exact model
    v(x, t, y), the exact flow map (z, y) -> x_1 and the per-label statistics (exact moments)."""
    per = [gaussian(d, seed=10 * y + 1, kind=kind)[2] for y in range(labels)]
    if shared_covariance:
        per = [DataStats(kind, s.mean, per[0].var, per[0].basis) for s in per]
    parts = [gaussian_of(s.mean, s) for s in per]

    def model(x, t, y):
        out = torch.empty_like(x)
        for label in range(labels):
            rows = y == label
            out[rows] = parts[label][0](x[rows], t.expand(len(x))[rows])
        return out

    def flow_map(z, y):
        return torch.stack([parts[int(label)][1](zi[None])[0] for zi, label in zip(z, y)])

    return model, flow_map, ConditionalStats("y", tuple(range(labels)), tuple(per))


@pytest.mark.parametrize("kind", ["diag", "full"])
@pytest.mark.parametrize("name", ODE_FRAMES)
def test_per_label_statistics_are_exact_on_per_label_gaussians_at_every_nfe(kind, name):
    labels = torch.tensor([2, 0, 1, 1, 2, 0, 0])
    model, flow_map, stats = per_label_gaussian(5, 3, kind)
    z = torch.randn(7, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    for steps in (1, 2, 4, 8):
        x = sample(model, (7, 5), integrator=name, steps=steps, dtype=F64, initial=z, data_stats=stats,
                   model_kwargs={"y": labels})
        assert (x - flow_map(z, labels)).abs().max() < 1e-10, (steps, (x - flow_map(z, labels)).abs().max())


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_the_first_call_mean_makes_a_shared_covariance_exact_for_every_label(kind):
    """Labels that differ only in their means: one covariance with the mean read from the first call is exact,
    although the statistics' own mean (the last label's) is wrong for the others."""
    labels = torch.tensor([0, 1, 2, 3, 1])
    model, flow_map, per = per_label_gaussian(4, 4, kind, shared_covariance=True)
    stats = per.stats[-1].with_first_call_mean()
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    for steps in (1, 2, 4, 8):
        for name in ("data-multistep", "data-multistep3-pc"):
            x = sample(model, (5, 4), schedule="vp", integrator=name, steps=steps, dtype=F64, initial=z,
                       data_stats=stats, model_kwargs={"y": labels})
            assert (x - flow_map(z, labels)).abs().max() < 1e-10
    wrong = sample(model, (5, 4), schedule="vp", integrator="data-multistep", steps=4, dtype=F64, initial=z,
                   data_stats=per.stats[-1], model_kwargs={"y": labels})
    assert (wrong - flow_map(z, labels)).abs().max() > 1e-3     # the same covariance with the file's mean is not


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_the_first_call_mean_is_exact_from_a_start_after_zero_too(kind):
    """From t_0 > 0 (a grid from a finite sigma_max, img2img) eta_X at the first call is not E[X | c]; the mean
    whose Gaussian gives that eta_X there is, for Gaussian data of the statistics' covariance."""
    labels = torch.tensor([0, 1, 2, 3, 1, 2])
    model, flow_map, per = per_label_gaussian(4, 4, kind, shared_covariance=True)
    stats = per.stats[0].with_first_call_mean()
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    exact = flow_map(z, labels)
    for grid in ([0.2, 0.5, 0.8, 1.0], [0.05, 0.3, 0.6, 0.9, 1.0]):
        t0 = grid[0]
        # the state at t_0 on the exact ODE path from z (per-label statistics are exact on these Gaussians)
        start = sample(model, (6, 4), integrator="data-euler", grid=[0.0, t0], dtype=F64, initial=z,
                       data_stats=per, model_kwargs={"y": labels}, final_step="euler")
        x = sample(model, (6, 4), integrator="data-multistep", grid=grid, dtype=F64, initial=start / (1 - t0),  # x_t0 = alpha_t0 initial
                   data_stats=stats, model_kwargs={"y": labels})
        assert (x - exact).abs().max() < 1e-10


def test_first_call_statistics_spend_the_call_at_zero():
    model, _, stats = gaussian(3, seed=0, kind="diag")
    calls = []

    def counted(x, t):
        calls.append(float(t[0]))
        return model(x, t)

    sample(counted, (2, 3), integrator="data-multistep", steps=4, dtype=F64, data_stats=stats)
    assert len(calls) == 3 and calls[0] > 0                  # the skip: 3 calls buy 4 steps
    calls.clear()
    sample(counted, (2, 3), integrator="data-multistep", steps=4, dtype=F64, data_stats=stats.with_first_call_mean())
    assert len(calls) == 4 and calls[0] == 0.0


def test_conditional_statistics_estimate_each_labels_moments_and_round_trip(tmp_path):
    model = conditional_mixture(8, classes=3, dim=6)
    labels = torch.arange(3000) % 3
    x = model.exact_samples(3000, 1, labels).to(F64)
    stats = ConditionalStats.from_samples(x, labels, kind="full")
    for j, y in enumerate(stats.labels):
        own = x[labels == y]
        assert torch.allclose(stats.stats[j].mean, own.mean(0)) and stats.stats[j].samples == 1000
        cov = stats.stats[j].basis @ torch.diag(stats.stats[j].var) @ stats.stats[j].basis.T
        assert torch.allclose(cov, torch.cov(own.T), atol=1e-10)
    again = DataStats.load(stats.save(tmp_path / "c.safetensors"))
    assert isinstance(again, ConditionalStats) and again.labels == (0, 1, 2) and again.key == "y"
    assert all(torch.equal(a.basis, b.basis) and torch.equal(a.mean, b.mean) for a, b in zip(stats.stats, again.stats))
    first = DataStats.load(stats.stats[0].with_first_call_mean().save(tmp_path / "f.safetensors"))
    assert first.first_call_mean and "first call" in first.describe()


def test_per_label_runs_do_not_depend_on_the_batch_size():
    model = conditional_mixture(2, classes=3, dim=6)
    labels = torch.arange(11) % 3
    stats = ConditionalStats.from_samples(model.exact_samples(600, 3, torch.arange(600) % 3), torch.arange(600) % 3,
                                          kind="full")
    whole = sample(model, (11, 6), integrator="data-multistep-pc", steps=5, dtype=F64, data_stats=stats,
                   model_kwargs={"y": labels})
    parts = sample(model, (11, 6), integrator="data-multistep-pc", steps=5, dtype=F64, data_stats=stats,
                   model_kwargs={"y": labels}, batch_size=4)
    assert (whole - parts).abs().max() < 1e-12


def test_sample_takes_statistics_or_the_path_of_their_file(tmp_path):
    model, flow_map, stats = gaussian(3, seed=6, kind="full")
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    path = stats.save(tmp_path / "s.safetensors")
    for given in (stats, path, str(path)):
        x = sample(model, (4, 3), integrator="data-multistep", steps=3, dtype=F64, initial=z, data_stats=given)
        assert (x - flow_map(z)).abs().max() < 1e-10
    with pytest.raises(LazyflowError, match="data_stats must be a DataStats"):
        sample(model, (4, 3), integrator="data-multistep", steps=3, data_stats=3)


def test_conditional_statistics_refusals():
    model = conditional_mixture(2, classes=3, dim=6)
    stats = ConditionalStats.from_samples(model.exact_samples(60, 3), torch.arange(60) % 3, kind="diag")
    run = dict(integrator="data-multistep", steps=4, dtype=F64, data_stats=stats)
    with pytest.raises(LazyflowError, match="per y: give model_kwargs"):
        sample(model, (4, 6), **run)
    with pytest.raises(LazyflowError, match="no y = 5"):
        sample(model, (4, 6), model_kwargs={"y": torch.tensor([0, 1, 5, 5])}, **run)
    with pytest.raises(LazyflowError, match="capture"):
        sample(model, (4, 6), model_kwargs={"y": torch.tensor([0, 1, 2, 2])}, capture=True, **run)
    with pytest.raises(LazyflowError, match="at least 2 samples per label"):
        ConditionalStats.from_samples(torch.randn(3, 2), torch.tensor([0, 0, 1]))
    with pytest.raises(LazyflowError, match="data_stats are of shape \\(6,\\), the samples of shape \\(5,\\)"):
        sample(lambda x, t, **kw: x, (4, 5), **run)
    with pytest.raises(LazyflowError, match="one kind, shape"):
        ConditionalStats("y", (0, 1), (stats.stats[0], DataStats.from_samples(torch.randn(5, 6), kind="full")))


def test_the_k_diffusion_sampler_checks_statistics_as_sample_does():
    """One check (data_stats.checked_data_stats) for sample and sample_lazyflow: shape, labels and unknown labels
    are refused before any network call, with the same words (k-diffusion's conditioning is its extra_args)."""
    from lazyflow.k_diffusion import sample_lazyflow

    model = conditional_mixture(2, classes=3, dim=6)
    stats = ConditionalStats.from_samples(model.exact_samples(60, 3), torch.arange(60) % 3, kind="diag")
    calls = []

    def denoiser(x, sigma, **kwargs):
        calls.append(sigma)
        return x

    run = dict(integrator="data-multistep", data_stats=stats)
    x = torch.zeros(4, 6, dtype=F64)
    with pytest.raises(LazyflowError, match="per y: give extra_args={'y': one integer label per sample \\(4\\)}"):
        sample_lazyflow(denoiser, x, [10.0, 1.0, 0.0], **run)
    with pytest.raises(LazyflowError, match="per y: give extra_args"):
        sample_lazyflow(denoiser, x, [10.0, 1.0, 0.0], extra_args={"y": torch.tensor([0.0, 1.0, 2.0, 2.0])}, **run)
    with pytest.raises(LazyflowError, match="no y = 5"):
        sample_lazyflow(denoiser, x, [10.0, 1.0, 0.0], extra_args={"y": torch.tensor([0, 1, 5, 5])}, **run)
    with pytest.raises(LazyflowError, match="data_stats are of shape \\(6,\\), the samples of shape \\(5,\\)"):
        sample_lazyflow(denoiser, torch.zeros(4, 5), [10.0, 1.0, 0.0], **run)
    assert calls == []


def test_directions_declare_their_layout():
    """``Directions.layout`` is a declared field (not given, derived from data_shape and grid): a DctLayout for
    dct statistics, None otherwise, and kept through dataclasses.replace."""
    import dataclasses

    from lazyflow.runtime.core.dct import DctLayout

    field = {f.name: f for f in dataclasses.fields(Directions)}["layout"]
    assert not field.init
    dct = DataStats.from_samples(torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0)), kind="dct")
    directions = dct.directions()
    assert directions.layout == DctLayout((2, 4, 4)) and directions.layout.plane == (4, 4)
    assert dataclasses.replace(directions, grid=None).layout == DctLayout((2, 4, 4))
    assert DataStats.from_samples(torch.randn(8, 3)).directions().layout is None
