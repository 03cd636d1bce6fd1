"""Exact mixtures as noise-prediction networks on SD 1.x's discrete schedule, their diffusers peers, and the
``diffusers-unet`` model kind: each against an independent expectation (dense linear algebra, diffusers' own
tables, the peers' documented starts)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lazyflow.errors import LazyflowError
from lazyflow.runtime.core.discrete_schedule import time_of_timestep, timestep_of_time
from lazyflow.runtime.models import gmm
from lazyflow.runtime.models.registry import load_model

diffusers = pytest.importorskip("diffusers")


def _one_gaussian(dim: int = 3, seed: int = 0) -> gmm.ExactMixtureModel:
    """One component N(mu, s^2 I + Q diag(l^2) Q^T): E[Z | x] in closed form by dense algebra."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(1, dim, 2, generator=g, dtype=torch.float64)).Q
    mixture = gmm.GaussianMixture(torch.ones(1, dtype=torch.float64), torch.randn(1, dim, generator=g,
                                  dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64), q,
                                  torch.tensor([[1.2, 0.5]], dtype=torch.float64))
    return gmm.ExactMixtureModel(mixture, (dim,), "one")


def _dense_noise(base: gmm.ExactMixtureModel, x: torch.Tensor, abar: float) -> torch.Tensor:
    """E[Z | x] = a (a^2 I + b^2 C)^-1 (x - b mu), a = sqrt(1 - abar), b = sqrt(abar)."""
    m = base.mixture
    cov = m.s[0] ** 2 * torch.eye(m.dim, dtype=torch.float64) + (m.Q[0] * m.l[0] ** 2) @ m.Q[0].T
    a, b = math.sqrt(1 - abar), math.sqrt(abar)
    return a * torch.linalg.solve(a * a * torch.eye(m.dim, dtype=torch.float64) + b * b * cov, (x - b * m.mu[0]).T).T


def test_noise_mixture_is_the_posterior_noise_at_diffusers_table_and_between_steps():
    base = _one_gaussian()
    net = gmm.DiscreteNoiseMixture(base)
    table = diffusers.DDIMScheduler(**{k: v for k, v in gmm.SD_CONFIG.items()}).alphas_cumprod.double()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for k in (0, 1, 500, 998, 999):   # diffusers' float32 table: 1e-6
        eps = net(x, torch.full((5,), float(k), dtype=torch.float64))
        assert torch.allclose(eps, _dense_noise(base, x, float(table[k])), rtol=2e-5, atol=2e-6)
    # between two steps: the schedule's own noise level abar(k) = beta(t(k))^2, which lies between the two
    k = torch.full((5,), 500.5, dtype=torch.float64)
    abar = float(net.schedule.values(time_of_timestep(net.schedule, k)).beta[0] ** 2)
    assert float(table[501]) < abar < float(table[500])
    assert torch.allclose(net(x, k), _dense_noise(base, x, abar), rtol=1e-10, atol=1e-12)


def test_discrete_kind_is_the_runtime_conversion_and_answers_exactly_elsewhere():
    loaded = load_model("discrete:gmm:5,dim=8")
    assert loaded.prediction == "noise" and loaded.source.name == "discrete-scaled_linear"
    assert loaded.diffusion.num_train_timesteps == 1000 and loaded.model.mixture.dim == 8
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    k = timestep_of_time(loaded.source, t)
    assert torch.allclose(loaded.model(x, t), loaded.diffusion.net(x, k), rtol=1e-12, atol=1e-12)
    velocity = loaded.answering(loaded.source, "velocity").model     # the mixture's exact view
    v = loaded.source.values(t)
    eps = loaded.model(x, t)
    eta_x = (x - v.alpha[:, None] * eps) / v.beta[:, None]
    assert torch.allclose(velocity(x, t), v.d_alpha[:, None] * eps + v.d_beta[:, None] * eta_x, rtol=1e-9, atol=1e-9)
    with pytest.raises(LazyflowError, match="not an exact mixture"):
        load_model("discrete:digits")
    with pytest.raises(LazyflowError, match="fixed mixture: dim=8"):
        load_model("discrete:gmm64", dim=8)


def test_diffusion_network_ve_form_of_the_table():
    loaded = load_model("discrete:gmm:5,dim=4")
    net = loaded.diffusion
    table = diffusers.DDIMScheduler(**gmm.SD_CONFIG).alphas_cumprod.double()
    lo, hi = net.sigma_range()
    assert lo == pytest.approx(math.sqrt((1 - table[0]) / table[0]), rel=5e-5)   # 1 - abar_0 in float32
    assert hi == pytest.approx(math.sqrt((1 - table[-1]) / table[-1]), rel=1e-5)
    for k in (0.0, 17.25, 640.0, 999.0):
        assert net.timestep_of_sigma(net.sigma_of_timestep(k)) == pytest.approx(k, abs=1e-7)
    assert net.timestep_of_sigma(1e-4) == 0.0 and net.timestep_of_sigma(100.0) == 999.0   # clamped as k-diffusion


def test_ve_denoiser_is_the_posterior_mean():
    from lazyflow.runtime.evaluation.discrete_peers import _ve_denoiser

    base = _one_gaussian(seed=3)
    loaded = load_model("discrete:gmm:5,dim=3")
    from lazyflow.runtime.models.diffusion_net import DiffusionNetwork

    network = DiffusionNetwork(gmm.DiscreteNoiseMixture(base), gmm.SD_CONFIG)
    denoise = _ve_denoiser(network.net, network)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sigma = network.sigma_of_timestep(321.0)
    abar = 1 / (1 + sigma ** 2)
    eps = _dense_noise(base, x * math.sqrt(abar), abar)
    assert torch.allclose(denoise(x, sigma), x - sigma * eps, rtol=1e-9, atol=1e-9)
    assert loaded.diffusion is not None


def test_discrete_peers_count_their_calls_and_start_where_their_scheduler_starts():
    from lazyflow.runtime.core.call_counter import CallCounter
    from lazyflow.runtime.evaluation.peers import bench_peers, peer_start

    loaded = load_model("discrete:gmm:5,dim=4")
    usable, skipped = bench_peers(loaded)
    assert "diffusers DDIM (leading spacing)" in usable and "k-diffusion dpmpp_2m (Karras rho=7, VE form)" in usable
    assert "stochastic" in skipped[0]
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    for name in ("diffusers DPM-Solver++ 2M (karras_sigmas)", "DEIS-tAB3 (EDM rho=7, VE form)"):
        fn = usable[name][1]
        counter = CallCounter(loaded.diffusion.net)
        assert torch.isfinite(fn(counter, z.clone(), 4, 0)).all() and counter.calls == 4, name
    # DDIM leading at 4 steps with steps_offset 1: timesteps 751, 501, 251, 1, from z at 751
    t0, scale = peer_start(usable["diffusers DDIM (leading spacing)"][1], 4)
    assert t0 == pytest.approx(1 - 752 / 1001) and scale == 1.0
    t0, scale = peer_start(usable["k-diffusion heun (Karras rho=7, VE form)"][1], 6)   # x_ve = sigma_max z
    abar = float(diffusers.DDIMScheduler(**gmm.SD_CONFIG).alphas_cumprod[-1])
    assert t0 == pytest.approx(1 - 1000 / 1001) and scale == pytest.approx(math.sqrt(1 - abar), rel=1e-6)


def _ddim_and_its_reference(loaded, runner_or_result_t0: float, n: int = 16, steps: int = 800):
    """DDIM (trailing) on the bench's start noise and the exact ODE (velocity view, ``steps``) from its start."""
    from lazyflow.runtime.core.noise import standard_normal
    from lazyflow.runtime.evaluation.discrete_peers import discrete_peers
    from lazyflow.runtime.evaluation.paths import path_reference

    z = standard_normal(0, range(n), 0, (4,))
    alpha = loaded.source.values(torch.tensor([runner_or_result_t0], dtype=torch.float64)).alpha[0]
    ref = path_reference(loaded.answering(loaded.source, "velocity").model, loaded.source, (z / alpha).float(), steps,
                         t0=runner_or_result_t0)
    x = discrete_peers(loaded.diffusion)["diffusers DDIM (trailing spacing)"][2](loaded.diffusion.net, z.clone(), 4, 0)
    return ref.error(x)


def test_a_discrete_peer_row_is_measured_from_its_own_start():
    from lazyflow.runtime.evaluation.bench import bench_model
    from lazyflow.runtime.evaluation.bench_runner import BenchRunner
    from lazyflow.runtime.evaluation.peers import bench_peers

    bench = bench_model("discrete:gmm:5,dim=4", None, 16)
    run = BenchRunner(bench, (16, 4), 0, lambda *a: [], None)
    with torch.no_grad():
        run.references.main = run.references.solve(100)   # the peer's x* takes as many steps
        name = "diffusers DDIM (trailing spacing)"
        row = run.peer(name, False, bench_peers(bench.loaded)[0][name][1], bench.peer_network(), 4)
    assert row.grid.startswith("DDIMScheduler") and row.details["start"]["t"] == pytest.approx(1 - 1000 / 1001)
    assert row.score("path") == pytest.approx(_ddim_and_its_reference(bench.loaded, row.details["start"]["t"],
                                                                      steps=100), rel=1e-6)


@pytest.mark.slow
def test_bench_of_a_discrete_mixture_runs_ours_on_open_grids_and_every_peer():
    from lazyflow.runtime.evaluation.bench import run_quality_bench
    from lazyflow.runtime.evaluation.bench_methods import OurMethod

    result = run_quality_bench("discrete:gmm:5,dim=4", [4], 16, 0, include_peers=True, log=lambda *a: None,
                               methods=[OurMethod("vp", "multistep", "logsnr-open:-2,2.5")])
    rows = {r["method"]: r for r in result["rows"]}
    ours = rows["vp/multistep/logsnr-open:-2,2.5"]
    assert ours["nfe"] == 4 and ours["path"] > 0 and "own start" in result["grid_note"]
    assert all(r["nfe"] <= 4 and not r.get("error") for r in result["rows"]), [r["method"] for r in result["rows"]
                                                                                  if r.get("error")]
    ddim = rows["diffusers DDIM (trailing spacing)"]
    assert ddim["path"] == pytest.approx(_ddim_and_its_reference(load_model("discrete:gmm:5,dim=4"),
                                                                 ddim["start"]["t"]), rel=1e-6)


def _tiny_unet(folder, prediction_type: str = "epsilon", pipeline: bool = False):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        prediction_type=prediction_type)
    if pipeline:
        diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    else:
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder)
    return unet.eval()


@pytest.mark.parametrize("where", ["folder", "file", "pipeline"])
def test_diffusers_unet_kind_loads_folder_file_or_pipeline_and_calls_k_of_t(tmp_path, where):
    unet = _tiny_unet(tmp_path / "m", "v_prediction", pipeline=where == "pipeline")
    path = tmp_path / "m" / "diffusion_pytorch_model.safetensors" if where == "file" else tmp_path / "m"
    loaded = load_model(str(path), kind="diffusers-unet")
    assert loaded.data_shape == (1, 8, 8) and loaded.prediction == "x" and loaded.diffusion is not None
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.25, 0.75], dtype=torch.float64)
    k = timestep_of_time(loaded.source, t).float()
    v = loaded.source.values(t)
    with torch.no_grad():
        expected = v.beta.float()[:, None, None, None] * x - v.alpha.float()[:, None, None, None] * unet(x, k).sample
        assert torch.allclose(loaded.model(x, t), expected, atol=1e-5)


def test_diffusers_unet_kind_refuses_in_one_line(tmp_path):
    _tiny_unet(tmp_path / "m")
    (tmp_path / "m" / "scheduler_config.json").unlink()
    with pytest.raises(LazyflowError, match="no scheduler_config.json"):
        load_model(str(tmp_path / "m"), kind="diffusers-unet")
    with pytest.raises(LazyflowError, match="not a saved diffusers UNet"):
        load_model(str(tmp_path), kind="diffusers-unet")
    (tmp_path / "w.bin").write_bytes(b"0")
    with pytest.raises(LazyflowError, match="must be .safetensors"):
        load_model(str(tmp_path / "w.bin"), kind="diffusers-unet")
    _tiny_unet(tmp_path / "n")
    config = json.loads((tmp_path / "n" / "scheduler_config.json").read_text())
    (tmp_path / "n" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "flow"}))
    with pytest.raises(LazyflowError, match="unknown prediction_type 'flow'"):
        load_model(str(tmp_path / "n"), kind="diffusers-unet")
    (tmp_path / "n" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(LazyflowError, match="reads UNet2DModel"):
        load_model(str(tmp_path / "n"), kind="diffusers-unet")


@pytest.mark.parametrize("integrator", ["data-euler", "data-multistep"])
def test_noise_network_runs_the_data_frame_from_pure_noise_exactly_on_gaussian_data(integrator):
    """N(0, v I) data as a discrete noise network: a data frame that skips the call at t = 0 (where a noise output
    says nothing) maps z to sqrt(v) z exactly; a classic integrator there is still refused."""
    from lazyflow import sample
    from lazyflow.runtime.core.data_stats import DataStats
    from lazyflow.runtime.models.diffusion_net import DiffusionNetwork, RuntimeModel

    var, dim = 0.3, 3
    one = gmm.GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, dim, dtype=torch.float64),
                              torch.tensor([math.sqrt(var)], dtype=torch.float64),
                              torch.eye(dim, 1, dtype=torch.float64)[None], torch.zeros(1, 1, dtype=torch.float64))
    network = DiffusionNetwork(gmm.DiscreteNoiseMixture(gmm.ExactMixtureModel(one, (dim,), "one")), gmm.SD_CONFIG)
    model = RuntimeModel(network)
    z = torch.randn(6, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for target in ("vp", network.schedule):
        out = sample(model, (6, dim), schedule=target, source=network.schedule, prediction=model.prediction, steps=5,
                     integrator=integrator, data_stats=DataStats.isotropic((dim,), var).with_first_call_mean(False),
                     dtype=torch.float64, initial=z)
        assert (out - math.sqrt(var) * z).abs().max() < 1e-10
    with pytest.raises(LazyflowError, match="does not determine eta_X at snr = 0"):
        sample(model, (6, dim), schedule="vp", source=network.schedule, prediction="noise", steps=4,
               integrator="multistep")


def test_path_reference_of_a_discrete_source_is_solved_in_vp_and_exact_on_gaussian_data():
    """x* of N(0, v I) from z at t = 0 is sqrt(v) z; from alpha(t0) z at t0 > 0 it is sqrt(v) z alpha /
    sqrt(alpha^2 + v beta^2) (the Gaussian ODE map): both within 1e-3 at 200 steps of the vp frame (4e-4 measured,
    second order; 1.8e-2 at 100 steps in the table's own time)."""
    from lazyflow.runtime.core.discrete_schedule import schedule_of_config
    from lazyflow.runtime.evaluation.paths import path_reference

    var, dim = 0.3, 3
    one = gmm.GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, dim, dtype=torch.float64),
                              torch.tensor([math.sqrt(var)], dtype=torch.float64),
                              torch.eye(dim, 1, dtype=torch.float64)[None], torch.zeros(1, 1, dtype=torch.float64))
    source = schedule_of_config(gmm.SD_CONFIG)
    velocity = gmm.ExactMixtureModel(one, (dim,), "one", source, "velocity")
    z = torch.randn(8, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = path_reference(velocity, source, z, 200)
    assert ref.method.startswith("vp/") and (ref.samples - math.sqrt(var) * z).abs().max() < 1e-3
    t0 = float(time_of_timestep(source, torch.tensor([751.0]))[0])
    start = source.values(torch.tensor([t0], dtype=torch.float64))
    ref = path_reference(velocity, source, z, 200, t0=t0)   # from the source state alpha(t0) x0
    exact = math.sqrt(var) * z * start.alpha / torch.sqrt(start.alpha ** 2 + var * start.beta ** 2)
    assert (ref.samples - exact).abs().max() < 1e-3


@pytest.mark.slow   # 10-20 s: a model bench with a fit
def test_bench_fits_a_bespoke_solver_on_a_diffusers_unet_that_the_pipeline_runs(tmp_path):
    """``lazyflow bench --model FOLDER --model-kind diffusers-unet --bespoke`` fits a solver on the UNet's table
    (it once stopped at the row, naming the table's schedule unknown) and the DDIM pipeline of that folder runs
    the solver file through LazyDiffusionScheduler at its own timesteps from 999."""
    from markdown_blocks import run_lazyflow

    from lazyflow.diffusers import LazyDiffusionScheduler

    unet = _tiny_unet(tmp_path / "m", pipeline=True)
    config = diffusers.DDIMScheduler.from_pretrained(tmp_path / "m", subfolder="scheduler").config
    status, printed = run_lazyflow(f"lazyflow bench --model {tmp_path / 'm'} --model-kind diffusers-unet --nfe 2 "
                                   f"--n 16 --bespoke --quick --no-peers --save {tmp_path / 'b.json'}")
    assert status == 0, printed[-2000:]
    solver = tmp_path / "b.bespoke-2.json"
    assert "bespoke/tuned:b.bespoke-2.json" in printed
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler.from_config(config))
    pipe.scheduler = LazyDiffusionScheduler.from_config({**config, "clip_sample": False}, integrator="bespoke",
                                                        grid=str(solver))   # DDIMPipeline's own makes it a DDIM one
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 1) and pipe.scheduler.timesteps[0] == 999
