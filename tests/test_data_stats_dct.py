"""Statistics diagonal in the 2-D DCT (runtime/core/dct.py, DataStats kind ``dct``) and the rule that picks a
kind (runtime/core/stats_kind.py): the DCT against scipy's, the data frames exact on stationary Gaussian data
(covariance diagonal in the DCT basis) at every NFE, the packed FLUX layout equal to the image one under the
packing permutation, estimation, files, per-label statistics and the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lazyflow import INTEGRATORS, DataStats, LazyflowError, sample
from lazyflow.cli import main
from lazyflow.runtime.core.data_frame import stochastic_data_frame
from lazyflow.runtime.core.data_stats import ConditionalStats
from lazyflow.runtime.core.dct import DctLayout, dct_matrix
from lazyflow.runtime.core.stats_kind import FULL_LIMIT, choose_kind

scipy_fft = pytest.importorskip("scipy.fft")

F64 = torch.float64
DATA_FRAMES = [name for name, method in INTEGRATORS.items() if method.needs_data_stats and not stochastic_data_frame(method)]


def dctn(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """scipy's orthonormal 2-D DCT-II (or its inverse) over the last two axes: the independent reference."""
    f = scipy_fft.idctn if inverse else scipy_fft.dctn
    return torch.from_numpy(f(x.numpy(), type=2, norm="ortho", axes=(-2, -1)))


def stationary(shape: tuple[int, ...], seed: int):
    """N(mu, Sigma), Sigma = D^T diag(lam) D (D: scipy's 2-D DCT): its exact linear-schedule velocity
    v = mu + D^T (a ⊙ D (x - t mu)), a = (t lam - (1 - t)) / ((1 - t)^2 + t^2 lam), its flow map
    x_1 = mu + D^T (sqrt(lam) ⊙ D z), and its statistics."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g, dtype=F64)
    lam = 0.05 + 3 * torch.rand(shape, generator=g, dtype=F64)

    def model(x, t):
        tt = t.to(F64).reshape(-1, *[1] * len(shape))
        a = (tt * lam - (1 - tt)) / ((1 - tt) ** 2 + tt**2 * lam)
        return mu + dctn(a * dctn(x - tt * mu), inverse=True)

    return model, (lambda z: mu + dctn(lam.sqrt() * dctn(z), inverse=True)), DataStats("dct", mu, lam)


# --- the transform ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 5, 8, 33])
def test_the_dct_matrix_is_orthonormal_and_is_scipys(n):
    c = dct_matrix(n)
    assert (c @ c.T - torch.eye(n, dtype=F64)).abs().max() < 1e-13
    reference = torch.from_numpy(scipy_fft.dct(np.eye(n), type=2, norm="ortho", axis=0))   # column j: DCT of e_j
    assert (c - reference).abs().max() < 1e-13
    assert dct_matrix(n, torch.float32).dtype == torch.float32 and dct_matrix(n) is dct_matrix(n)   # cached


@pytest.mark.parametrize("shape,grid", [((8, 6), None), ((2, 8, 6), None), ((2, 3, 5, 4), None),
                                        ((16, 3), (4, 4)), ((24, 2), (4, 6))])
def test_forward_is_scipys_dct_and_back_is_its_inverse(shape, grid):
    w = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    layout = DctLayout(shape, grid)
    y = layout.forward(w)
    if grid is None:
        assert (y - dctn(w)).abs().max() < 1e-12
    else:   # packed: the DCT of each channel's plane over the token grid
        planes = w.reshape(3, *grid, shape[1]).permute(0, 3, 1, 2)
        assert (y - dctn(planes).permute(0, 2, 3, 1).reshape(3, *shape)).abs().max() < 1e-12
    assert (layout.inverse(y) - w).abs().max() < 1e-12
    stats = DataStats("dct", torch.zeros(shape, dtype=F64), torch.ones(shape, dtype=F64), grid=grid)
    dirs = stats.directions()
    assert (dirs.back(dirs.to(w)) - w).abs().max() < 1e-12 and torch.equal(dirs.to(w), y)


# --- exactness ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DATA_FRAMES)
def test_the_data_frames_are_exact_on_stationary_gaussian_data(name):
    model, flow_map, stats = stationary((2, 8, 6), seed=len(name))
    z = torch.randn(5, 2, 8, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    for steps in (1, 2, 4, 8):
        x = sample(model, (5, 2, 8, 6), schedule="linear", integrator=name, steps=steps, dtype=F64, initial=z,
                   data_stats=stats)
        assert (x - flow_map(z)).abs().max() < 1e-10, (steps, (x - flow_map(z)).abs().max())


def test_a_basis_that_does_not_diagonalise_the_covariance_is_not_exact():
    """The exactness above is the DCT's doing: the same variances per element (diag) miss it."""
    model, flow_map, stats = stationary((2, 8, 6), seed=3)
    z = torch.randn(5, 2, 8, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = sample(model, (5, 2, 8, 6), schedule="linear", integrator="data-multistep-pc", steps=4, dtype=F64, initial=z,
               data_stats=DataStats("diag", stats.mean, stats.var))
    assert (x - flow_map(z)).abs().max() > 1e-3


@pytest.mark.slow   # 8,000 per-sample noise streams: about 8 s
def test_the_stochastic_frame_keeps_the_stationary_gaussian_exactly():
    """data-sde on stationary Gaussian data: the output is affine in the noises, so its mean and covariance are
    those of N(mu, Sigma) at any NFE; checked on the sample moments of 8,000 draws of a (1, 4, 4) image (about
    5 standard errors)."""
    model, _, stats = stationary((1, 4, 4), seed=2)
    x = sample(model, (8000, 1, 4, 4), schedule="linear-sde", integrator="data-sde-multistep", steps=3, dtype=F64,
               data_stats=stats, seed=5)
    coef = dctn(x - stats.mean)
    assert (coef.mean(0) / stats.var.sqrt()).abs().max() < 5 / 8000 ** 0.5
    assert ((coef.var(0) / stats.var) - 1).abs().max() < 5 * (2 / 8000) ** 0.5


def test_the_packed_layout_is_the_image_layout_under_the_packing_permutation():
    """FLUX packs (C, H, W) latents into (h w, 4 C) tokens; a packed channel's plane over the h x w token grid is
    the image layout's plane: the statistics, the directions and the samples agree under the permutation."""
    h, w, k = 4, 6, 3
    model, _, image_stats = stationary((k, h, w), seed=9)
    pack = lambda v: v.permute(0, 2, 3, 1).reshape(v.shape[0], h * w, k)     # noqa: E731 (n, K, h, w) -> (n, S, K)
    unpack = lambda v: v.reshape(v.shape[0], h, w, k).permute(0, 3, 1, 2)   # noqa: E731
    packed = DataStats("dct", pack(image_stats.mean[None])[0], pack(image_stats.var[None])[0], grid=(h, w))
    z = torch.randn(4, k, h, w, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(unpack(packed.directions().to(pack(z))), image_stats.directions().to(z), atol=1e-13, rtol=0)
    x_image = sample(model, (4, k, h, w), schedule="linear", integrator="data-multistep-pc", steps=4, dtype=F64,
                     initial=z, data_stats=image_stats)
    x_packed = sample(lambda x, t: pack(model(unpack(x), t)), (4, h * w, k), schedule="linear",
                      integrator="data-multistep-pc", steps=4, dtype=F64, initial=pack(z), data_stats=packed)
    assert (unpack(x_packed) - x_image).abs().max() < 1e-12
    draws = torch.randn(300, k, h, w, generator=torch.Generator().manual_seed(1), dtype=F64) * 2 + 1
    a = DataStats.from_samples(pack(draws), kind="dct", grid=(h, w))
    b = DataStats.from_samples(draws, kind="dct")
    assert torch.allclose(unpack(a.var[None])[0], b.var, rtol=1e-12) and a.grid == (h, w) and b.grid is None


# --- estimation, files, labels ------------------------------------------------------------------------

def test_estimated_statistics_converge_to_the_truth():
    """The relative error of each coefficient's variance falls like sqrt(2/n), that of the mean (in the DCT
    coordinates, in units of the coefficient's standard deviation) like 1/sqrt(n)."""
    _, flow_map, truth = stationary((1, 8, 8), seed=4)
    errors = []
    for n in (200, 10_000):
        z = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(n), dtype=F64)
        est = DataStats.from_samples(flow_map(z), kind="dct")
        errors.append(((est.var / truth.var - 1).abs().max(), (dctn(est.mean - truth.mean) / truth.var.sqrt()).abs().max()))
    (var_few, mean_few), (var_many, mean_many) = errors
    assert var_many < 0.07 and mean_many < 0.05           # about 5 standard errors at n = 10,000
    assert var_many < var_few / 4 and mean_many < mean_few / 4


def test_the_floor_and_the_refusals():
    x = torch.zeros(10, 8, 8, dtype=F64)
    x[:, 0, 0] = torch.arange(10)
    assert DataStats.from_samples(x, kind="dct", floor=1e-3).var.min() == 1e-3
    with pytest.raises(LazyflowError, match="not a square grid"):
        DataStats.from_samples(torch.randn(5, 12, 3), kind="dct", packed=True)
    with pytest.raises(LazyflowError, match="shape \\(S, K\\)"):
        DataStats.from_samples(torch.randn(5, 2, 4, 4), kind="dct", packed=True)
    with pytest.raises(LazyflowError, match="layout of dct"):
        DataStats.from_samples(torch.randn(5, 16, 3), kind="diag", packed=True)
    with pytest.raises(LazyflowError, match=r"\(\.\.\., H, W\)"):
        DataStats.from_samples(torch.randn(5, 16), kind="dct")
    with pytest.raises(LazyflowError, match="grid 4 x 5"):
        DataStats("dct", torch.zeros(16, 2), torch.ones(16, 2), grid=(4, 5))
    with pytest.raises(LazyflowError, match="one variance per coefficient"):
        DataStats("dct", torch.zeros(2, 4, 4), torch.ones(2, 1, 1))
    with pytest.raises(LazyflowError, match="token grid is for dct"):
        DataStats("diag", torch.zeros(16, 2), torch.ones(16, 2), grid=(4, 4))
    with pytest.raises(LazyflowError, match="chooses the rank"):
        DataStats.from_samples(torch.randn(5, 4), kind="auto", rank=2)


@pytest.mark.parametrize("grid", [None, (4, 2)])
def test_files_round_trip(tmp_path, grid):
    shape = (8, 3) if grid else (2, 4, 6)
    stats = DataStats.from_samples(torch.randn(40, *shape, generator=torch.Generator().manual_seed(0)), kind="dct",
                                   grid=grid)
    again = DataStats.load(stats.save(tmp_path / "dct.safetensors"))
    assert (again.kind, again.grid, again.samples) == ("dct", grid, 40)
    assert torch.equal(again.mean, stats.mean) and torch.equal(again.var, stats.var)


def test_per_label_statistics_are_exact_for_per_label_stationary_gaussians(tmp_path):
    models = [stationary((1, 4, 6), seed=s) for s in (20, 21)]
    stats = ConditionalStats("y", (3, 7), tuple(m[2] for m in models))
    stats = ConditionalStats.load(stats.save(tmp_path / "labels.safetensors"))
    labels = torch.tensor([7, 3, 3, 7, 7])
    z = torch.randn(5, 1, 4, 6, generator=torch.Generator().manual_seed(2), dtype=F64)

    def model(x, t, y):
        return torch.stack([models[int(v == 7)][0](x[i:i + 1], t[i:i + 1])[0] for i, v in enumerate(y)])

    expected = torch.stack([models[int(v == 7)][1](z[i:i + 1])[0] for i, v in enumerate(labels)])
    for name in ("data-multistep-pc", "data-euler"):
        x = sample(model, (5, 1, 4, 6), schedule="linear", integrator=name, steps=3, dtype=F64, initial=z,
                   data_stats=stats, model_kwargs={"y": labels})
        assert (x - expected).abs().max() < 1e-10
    draws = torch.randn(60, 16, 2, generator=torch.Generator().manual_seed(3))
    per = ConditionalStats.from_samples(draws, torch.arange(60) % 2, kind="dct", packed=True)
    assert per.kind == "dct" and [s.grid for s in per.stats] == [(4, 4), (4, 4)]
    again = ConditionalStats.load(per.save(tmp_path / "packed.safetensors"))
    assert [s.grid for s in again.stats] == [(4, 4), (4, 4)] and torch.equal(again.stats[1].var, per.stats[1].var)
    assert ConditionalStats.from_samples(draws, torch.arange(60) % 2, kind="auto", packed=True).kind == "dct"


# --- the rule ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(64,), (16, 16), (4, 32, 32), (1024,), (8192,)])
@pytest.mark.parametrize("n", [2, 100, 1000, 4000])
def test_the_rule_never_picks_full_with_fewer_samples_than_elements(shape, n):
    kind, rank = choose_kind(shape, n)
    d = int(np.prod(shape))
    assert kind != "full" or n >= d
    assert kind in ("full", "dct", "diag") and rank is None
    assert kind != "full" or n >= 100 * d            # the measured samples per element (stats_kind's docstring)


def test_the_rule_picks_dct_for_images_and_packed_latents_and_full_for_small_flat_data():
    assert choose_kind((4, 32, 32), 2000)[0] == "dct"
    assert choose_kind((16, 128, 128), 500)[0] == "dct"
    assert choose_kind((4096, 64), 500, packed=True)[0] == "dct"
    assert choose_kind((8,), 4000) == ("full", None) and choose_kind((32,), 4000) == ("full", None)
    assert choose_kind((64,), 4000) == ("diag", None) and choose_kind((4096,), 1000) == ("diag", None)
    assert choose_kind((1, 8, 8), 100_000) == ("full", None)    # full where the samples allow, images too
    assert choose_kind((FULL_LIMIT * 2,), 10 ** 6)[0] != "full"
    assert DataStats.from_samples(torch.randn(50, 2, 16, 16), kind="auto").kind == "dct"
    assert choose_kind((1, 8, 8), 1797) == ("diag", None)      # the digits, where dct lost (stats_kind)


def test_the_cli_writes_dct_and_auto_statistics(tmp_path, capsys):
    np.save(tmp_path / "packed.npy", np.random.default_rng(0).standard_normal((30, 16, 4)))
    assert main(["stats", "--from", str(tmp_path / "packed.npy"), "--kind", "dct", "--packed",
                 "--out", str(tmp_path / "a.safetensors")]) == 0
    assert "packed on a 4 x 4 token grid" in capsys.readouterr().out
    assert DataStats.load(tmp_path / "a.safetensors").grid == (4, 4)
    assert main(["stats", "--from", str(tmp_path / "packed.npy"), "--kind", "auto", "--packed", "--grid", "2,8",
                 "--out", str(tmp_path / "b.safetensors")]) == 0
    assert DataStats.load(tmp_path / "b.safetensors").grid == (2, 8)
    assert main(["stats", "--from", str(tmp_path / "packed.npy"), "--kind", "diag", "--packed",
                 "--out", str(tmp_path / "c.safetensors")]) != 0
    assert "--packed and --grid are for --kind dct or auto" in capsys.readouterr().err
