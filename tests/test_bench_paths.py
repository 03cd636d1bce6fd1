"""The bench's checks beyond FD: the pathwise error against a converged reference from the same noise, the
Gaussian-map baseline (what FD alone would reward), the exact likelihood gap, the random mixtures
``gmm:SEED``, the data-frame rows with estimated statistics, the peers' shared start noise and the
pathwise goals."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from lazyflow.cli import main
from lazyflow.errors import LazyflowError
from lazyflow.runtime.core.noise import standard_normal
from lazyflow.runtime.evaluation import peers
from lazyflow.runtime.evaluation.bench import (GAUSSIAN_MAP, STATS_FILE_MISSING, OurMethod, bench_models,
                                               data_frame_methods, run_quality_bench)
from lazyflow.runtime.evaluation.data_rows import gaussian_map, stats_kinds
from lazyflow.runtime.evaluation.gmm_metrics import MixtureScorer
from lazyflow.runtime.evaluation.goals import path_goals_markdown
from lazyflow.runtime.evaluation.paths import path_error, path_reference
from lazyflow.runtime.models import gmm
from lazyflow.runtime.models.registry import load_model, model_kind_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = "gmm:3,dim=8,components=3,rank=2"
QUIET = {"log": lambda *a: None}


def bench(methods, n=48, seed=1, nfes=(4,), **options):
    return run_quality_bench(SMALL, list(nfes), n, seed, include_peers=options.pop("include_peers", False),
                             methods=methods, **QUIET, **options)


@pytest.mark.slow   # 3 s: converged references
def test_path_is_measured_against_a_converged_reference_from_the_same_noise():
    seen = {}
    result = bench([OurMethod("linear", "midpoint", "uniform"), OurMethod("pointmass", "euler", "uniform")],
                   on_samples=lambda row, x: seen.setdefault(row.method, x))
    midpoint, sde = result["rows"]
    assert sde["stochastic"] and sde["path"] is None and midpoint["path"] > 0
    reference = result["path_reference"]
    assert reference["steps"] == 800 and reference["check_steps"] == 400
    assert reference["check"] < 0.01 * midpoint["path"]
    # doubling the steps moves the row's path by less than 1% of it, and the reference starts from the bench's x0
    model = load_model(SMALL).model
    x0 = standard_normal(1, range(48), 0, (8,))
    finer = path_reference(model, "linear", x0, steps=1600)
    assert abs(path_error(seen["linear/midpoint/uniform"], finer.samples) - midpoint["path"]) < 0.01 * midpoint["path"]
    ode = result["references"][0]
    assert ode["path"] < 0.05 * midpoint["path"] and result["references"][1]["path"] is None


@pytest.mark.slow   # 2-3 s: a bench run
def test_the_gaussian_map_makes_no_call_and_has_the_samples_moments():
    result = bench([OurMethod("linear", "data-euler", "uniform", stats="diag")], nfes=(2, 4))
    rows = [r for r in result["rows"] if r["method"] == GAUSSIAN_MAP]
    assert len(rows) == 2 and all(r["nfe"] == 0 and r["baseline"] and not r["peer"] for r in rows)
    assert rows[0]["path"] > 2 * result["rows"][0]["path"]     # matching moments is not matching paths
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(3, 3, generator=g, dtype=torch.float64)
    samples = torch.randn(500, 2, 3, generator=g, dtype=torch.float64) @ mixing
    mu = samples.reshape(500, -1).mean(0)
    basis = torch.eye(6, dtype=torch.float64).reshape(6, 2, 3)          # x = mu + Sigma^(1/2) e_i, column by column
    root = (gaussian_map(samples, basis).reshape(6, -1) - mu).T
    cov = torch.from_numpy(np.cov(samples.reshape(500, -1).numpy(), rowvar=False))
    assert torch.allclose(root, root.T, atol=1e-10) and torch.allclose(root @ root, cov, atol=1e-10)
    assert torch.allclose(gaussian_map(samples, torch.zeros(1, 2, 3, dtype=torch.float64)).reshape(-1), mu)


def test_nll_gap_is_about_zero_for_exact_samples_and_positive_for_a_shifted_copy():
    model = gmm.load_random(SMALL)
    scorer = MixtureScorer(model, 2000)
    exact = model.exact_samples(2000, 77)
    gap = scorer.score(exact)["nll_gap"]
    floors = [scorer.floors(2000, seed)["nll_gap"] for seed in (1, 2, 3)]
    assert abs(gap) < 0.2 and max(abs(f) for f in floors) < 0.2
    assert scorer.score(exact + 0.3)["nll_gap"] > 1.0
    assert "nll_gap" in scorer.metrics and "nll_gap" in scorer.describe()


def test_random_mixtures_are_a_function_of_the_seed():
    a, b, c = (load_model(name).model.mixture for name in ("gmm:5", "gmm:5", "gmm:6"))
    fresh = gmm.random_mixture(5)
    assert all(torch.equal(getattr(a, f), getattr(fresh, f)) and torch.equal(getattr(a, f), getattr(b, f))
               for f in ("w", "mu", "s", "Q", "l"))
    assert not torch.allclose(a.mu, c.mu) and not torch.allclose(a.w, c.w)
    assert (a.dim, len(a.w), a.Q.shape[2]) == (32, 6, 3)                       # the defaults
    sized = load_model("gmm:5,dim=16,rank=2", components=4)
    assert sized.data_shape == (16,) and sized.model.name == "gmm:5,dim=16,components=4,rank=2"
    assert model_kind_for("gmm:5").exact and "gmm:SEED[,dim=D][,components=K][,rank=R]" in bench_models()
    with pytest.raises(LazyflowError, match="takes an argument"):
        model_kind_for("gmm")
    with pytest.raises(LazyflowError, match="rank=5 in the name but rank=4"):
        load_model("gmm:5,rank=5", rank=4)
    for bad in ("gmm:x", "gmm:5,width=3", "gmm:5,dim=0"):
        with pytest.raises(LazyflowError):
            load_model(bad)


@pytest.mark.slow   # 3 s: a bench run and its replay
def test_data_frame_rows_carry_their_statistics_and_reproduce_from_the_written_file(tmp_path, capsys):
    assert stats_kinds(64) == ("full", "diag") and stats_kinds(4096) == ("diag",)
    # image-shaped data get dct beside them (planes of 16 x 16 and more); the 8 x 8 digits do not
    assert stats_kinds(1024, 2000, (1, 32, 32)) == ("diag", "dct")
    assert stats_kinds(64, None, (1, 8, 8)) == ("full", "diag")
    methods = [m for m in data_frame_methods(False, ("full", "diag")) if not m.schedule.endswith("-sde")]  # ODE rows
    assert {m.name for m in methods} >= {"linear/data-multistep-pc/uniform[full]", "vp/data-euler/uniform[diag]"}
    seen = {}
    result = bench(methods[:1] + methods[-1:], on_samples=lambda row, x: seen.setdefault(row.method, x),
                   save=tmp_path / "b.json")
    rows = [r for r in result["rows"] if not r.get("baseline")]
    assert [r["stats"] for r in rows] == ["full", "diag"] and all(r["path"] is not None for r in rows)
    assert result["data_stats"]["full"]["from"] == "exact samples" and result["data_stats"]["full"]["samples"] == 2000
    for row in rows:
        args = row["sample_args"]
        assert args[args.index("--data-stats") + 1] == str(tmp_path / f"b.stats-{row['stats']}.safetensors")
        out = tmp_path / "x.npy"
        assert main(["sample", *args, "--out", str(out), "--force"]) == 0
        # the same computation replayed from the written file (statistics bitwise the same, tested in
        # test_data_frame); float32 samples of size ~2 compared to 1e-5 (about 40 ulp), so that a BLAS that orders
        # a sum differently on another CPU passes, while any other sampler, grid or statistics (>= 1e-3 apart
        # here) fails
        np.testing.assert_allclose(np.load(out), seen[row["method"]].numpy(), rtol=0, atol=1e-5)
    unsaved = bench(methods[:1])
    assert STATS_FILE_MISSING in unsaved["rows"][0]["sample_args"] and "sample_args_need" in unsaved["rows"][0]
    capsys.readouterr()


@pytest.mark.slow   # 2,000 of the model's own samples; CI's slow pass runs it
def test_digits_statistics_come_from_the_models_own_samples_with_their_cost():
    result = run_quality_bench("digits", [4], 20, 0, include_peers=False, **QUIET,
                               methods=[OurMethod("linear", "data-multistep-pc", "uniform", stats="diag")])
    info = result["data_stats"]["diag"]
    assert "own samples" in info["from"] and info["model_calls"] == 32 and info["sample_evaluations"] == 64_000
    assert result["rows"][0]["nfe"] == 4 and result["rows"][0]["path"] is not None
    assert not any(r.get("baseline") for r in result["rows"])       # no exact samples: no Gaussian map


@pytest.mark.slow   # 2-3 s: every peer
def test_every_peer_row_starts_from_the_same_noise(monkeypatch):
    pytest.importorskip("diffusers")
    pytest.importorskip("flow_matching")
    starts = []
    for name, (stochastic, needs, fn) in list(peers.PEERS.items()):
        def recording(model, x0, nfe, seed, fn=fn, name=name):
            starts.append((name, x0.clone()))
            return fn(model, x0, nfe, seed)
        monkeypatch.setitem(peers.PEERS, name, (stochastic, needs, recording))
    result = bench([OurMethod("linear", "midpoint", "uniform")], n=16, nfes=(4, 6), include_peers=True)
    x0 = standard_normal(1, range(16), 0, (8,))
    assert len(starts) == 2 * len(peers.PEERS) and all(torch.equal(x, x0) for _, x in starts)
    deterministic = [r for r in result["rows"] if r["peer"] and not r["stochastic"]]
    assert all(r["path"] is not None for r in deterministic if "error" not in r)
    assert {r["method"] for r in result["rows"]} >= {"diffusers UniPC (karras sigmas)", "flow_matching rk4"}


def test_pathwise_goals_compare_the_lowest_path_and_call_ties():
    def row(method, peer, budget, path, fd, nll, sde=False, **extra):
        return {"method": method, "peer": peer, "stochastic": sde, "budget": budget, "nfe": budget, "path": path,
                "fd": fd, "nll_gap": nll, **extra}

    result = {"nfe_budgets": [4, 6], "metrics": ["fd", "nll_gap", "path"],
              "floors": {"nll_gap": {"min": -0.1, "max": 0.1}},
              "rows": [row("a", False, 4, 0.5, 1.0, 2.0), row("b", False, 4, 0.7, 0.9, -0.5),
                       row("p", True, 4, 1.0, 1.02, 0.6),
                       row("g", False, 4, 9.0, 0.1, 5.0, baseline=True), row("s", False, 4, None, 0.1, 0.01, sde=True),
                       row("a", False, 6, 0.5, 1.0, 0.05), row("p", True, 6, 0.7, 1.5, 0.08)]}
    text = path_goals_markdown(result)
    assert "| 4 | 0.5000 a | 1.000 p | 0.50 | 1.000 vs 1.020: no worse (tie (-2%)) | 2.000 vs 0.6000: worse" in text
    assert "- 4 NFE, path of ours at most 0.6 x the best peer's: met" in text
    assert "- 6 NFE, path of ours at most 0.6 x the best peer's: missed" in text
    assert "0.0500 vs 0.0800: no worse (tie (both within the floor))" in text
    # a wins in path, b in likelihood: no one sampler of ours does both
    assert "- 4 NFE, one sampler of ours meeting the path goal and no worse than the best peer in fd, nll_gap: " \
           "missed (no row of ours does both)" in text
    result["rows"].append(row("c", False, 4, 0.55, 1.04, 0.58))
    assert "- 4 NFE, one sampler of ours meeting the path goal and no worse than the best peer in fd, nll_gap: met by " \
           "c (path 0.5500, ratio 0.55; fd 1.040, nll_gap 0.5800)" in path_goals_markdown(result)


def test_models_never_import_the_evaluation_layer():
    code = ("import sys, lazyflow.runtime.models.registry as r; r.load_model('gmm64'); "
            "sys.exit(any(m.startswith('lazyflow.runtime.evaluation') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.slow   # three 800-step references; CI's slow pass runs it
def test_a_peer_that_starts_from_sigma_max_is_scored_against_the_ode_from_its_own_start(monkeypatch):
    """A VE peer starts at t0 = 1 / 81 from (1 - t0) x0: its path is against the model's ODE solved from there
    (the row says so), not against x* from x0 at t = 0."""
    from lazyflow.runtime.evaluation.bench import bench_model

    name = "iPNDM (EDM rho=7, sigma_max 80)"
    monkeypatch.setattr(peers, "PEERS", {name: peers.PEERS[name]})
    seen = {}
    result = bench([], n=16, include_peers=True, on_samples=lambda row, x: seen.setdefault(row.method, x))
    row = next(r for r in result["rows"] if r["method"] == name)
    t0, scale = peers.peer_start(peers.PEERS[name][2])
    assert row["start"]["t"] == pytest.approx(1 / 81) and "from t = 0.0123457" in row["start"]["path_reference"]
    x0 = standard_normal(1, range(16), 0, (8,))
    model = bench_model(SMALL, None, 16).peer_model()
    own = path_reference(model, "linear", x0 * (scale / (1 - t0)), t0=t0)
    assert row["path"] == pytest.approx(own.error(seen[name]), rel=1e-9)
    # x* from x0 at t = 0 is 4e-4 away (the data term t0 X the start drops): the row's path differs by 2.5e-4
    assert row["path"] != pytest.approx(path_reference(model, "linear", x0).error(seen[name]), abs=1e-5)
