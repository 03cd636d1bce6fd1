"""One rule for grid and steps at every entry point (issue 26): ``sample``, ``sample_to_file``, ``lazyflow sample``,
the diffusers scheduler and the bench give the same times for the same inputs, a tuned grid file named by text or
by ``pathlib.Path`` alike; the samplers on the caller's sigmas (k-diffusion, ComfyUI) give the same refusal.

Expectations are independent of the resolver: the times written into the file, ``linspace(0, 1, 9)`` for the
default, the explicit times as given.  Times are compared to 1e-12 (float64 times; the runs may round differently)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lazyflow import LazyflowError, sample
from lazyflow.cli import main
from lazyflow.runtime import models
from lazyflow.runtime.core import sampler
from lazyflow.runtime.core.gridfile import TunedGrid, save_grid_file
from lazyflow.runtime.core.grid_choice import own_steps
from lazyflow.runtime.models.sampling import sample_to_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMES = (0.0, 0.3, 0.55, 0.8, 1.0)
SCALED = (0.0, 0.2, 0.5, 0.7, 1.0)


@pytest.fixture
def files(tmp_path):
    """A tuned grid of linear (4 steps) and one of linear-sde tuned at diffusion scale 0.5."""
    plain = save_grid_file(TunedGrid(times=TIMES, schedule="linear", integrator="multistep-pc", model="digits",
                                     nfe=4), tmp_path / "g.json")
    scaled = save_grid_file(TunedGrid(times=SCALED, schedule="linear-sde(diffusion*0.5)", integrator="multistep-pc",
                                      model="digits", nfe=4, diffusion_scale=0.5), tmp_path / "s.json")
    return plain, scaled


@pytest.fixture
def prepared(monkeypatch):
    """Every SamplingRun.prepare's (target schedule, times), as the run was planned."""
    seen = []
    original = sampler.SamplingRun.prepare.__func__

    def spy(cls, *args, **kwargs):
        run = original(cls, *args, **kwargs)
        seen.append((run.target.describe(), run.plan.times.tolist()))
        return run

    monkeypatch.setattr(sampler.SamplingRun, "prepare", classmethod(spy))
    return seen


def _sample_times(grid, schedule="linear", **options):
    """The step times a sample() run visits (its callback), with t = 1 appended."""
    times = []
    sample(models.load("digits"), (2, 1, 8, 8), schedule=schedule, grid=grid, callback=lambda i: times.append(i.t),
           **options)
    return [*times, 1.0]


def _close(a, b):
    assert torch.allclose(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), atol=1e-12), \
        (a, b)


@pytest.mark.parametrize("kind", [str, Path])
def test_sample_sample_to_file_and_the_cli_give_a_tuned_grid_its_own_steps(files, prepared, tmp_path, kind):
    grid = kind(files[0])
    _close(_sample_times(grid), TIMES)
    run = sample_to_file("digits", tmp_path / "a.npy", num_samples=2, grid=grid)
    assert run.steps == len(TIMES) - 1
    assert main(["sample", "--model", "digits", "--n", "2", "--grid", str(grid), "--out", str(tmp_path / "b.npy")]) == 0
    assert [schedule for schedule, _ in prepared] == ["linear"] * 3
    for _, times in prepared:
        _close(times, TIMES)


@pytest.mark.parametrize("kind", [str, Path])
def test_a_grid_tuned_at_a_diffusion_scale_brings_it_at_every_entry_point(files, prepared, tmp_path, kind):
    grid = kind(files[1])
    _close(_sample_times(grid, schedule="linear-sde", seed=1), SCALED)
    sample_to_file("digits", tmp_path / "a.npy", num_samples=2, schedule="linear-sde", grid=grid)
    main(["sample", "--model", "digits", "--n", "2", "--schedule", "linear-sde", "--grid", str(grid),
          "--out", str(tmp_path / "b.npy")])
    assert [schedule for schedule, _ in prepared] == ["linear-sde(diffusion*0.5)"] * 3
    for _, times in prepared:
        _close(times, SCALED)


@pytest.mark.parametrize("kind", [str, Path])
def test_a_wrong_step_count_is_refused_alike(files, tmp_path, kind):
    grid = kind(files[0])
    with pytest.raises(LazyflowError, match="it has 4 steps, not 6"):
        sample(models.load("digits"), (2, 1, 8, 8), grid=grid, steps=6)
    with pytest.raises(LazyflowError, match="it has 4 steps, not 6"):
        sample_to_file("digits", tmp_path / "a.npy", num_samples=2, grid=grid, steps=6)


def test_default_and_explicit_grids_alike(prepared, tmp_path):
    _close(_sample_times("uniform"), torch.linspace(0, 1, 9).tolist())
    _close(_sample_times([0.0, 0.4, 1.0]), [0.0, 0.4, 1.0])
    sample_to_file("digits", tmp_path / "a.npy", num_samples=2)
    main(["sample", "--model", "digits", "--n", "2", "--grid", "0,0.4,1", "--out", str(tmp_path / "b.npy")])
    _close(prepared[2][1], torch.linspace(0, 1, 9).tolist())
    _close(prepared[3][1], [0.0, 0.4, 1.0])


@pytest.mark.parametrize("kind", [str, Path])
def test_the_bench_reads_a_tuned_grid_s_steps_by_the_same_rule(files, kind):
    assert own_steps(kind(files[0])) == len(TIMES) - 1
    assert own_steps("uniform") is None and own_steps("0,0.5,1") == 2


@pytest.mark.parametrize("kind", [str, Path])
def test_the_diffusers_scheduler_gives_the_same_times(files, kind):
    pytest.importorskip("diffusers")
    from lazyflow.runtime.integrations.diffusers import LazyFlowScheduler

    scheduler = LazyFlowScheduler(grid=kind(files[0]))
    scheduler.set_timesteps(len(TIMES) - 1)
    _close(scheduler.times.tolist(), TIMES)
    assert scheduler.config.grid == str(files[0])          # saved as text in the config
    scaled = LazyFlowScheduler(schedule="linear-sde", grid=kind(files[1]))
    scaled.set_timesteps(len(SCALED) - 1)
    _close(scaled.times.tolist(), SCALED)
    assert scaled.target.describe() == "linear-sde(diffusion*0.5)"


def test_a_bespoke_solver_without_its_file_is_refused_by_every_entry_point():
    with pytest.raises(LazyflowError, match="runs a fitted solver"):
        sample(models.load("digits"), (2, 1, 8, 8), integrator="bespoke")
    from lazyflow.runtime.integrations.comfyui import sampler_options
    from lazyflow.runtime.integrations.k_diffusion_samplers import sample_lazyflow

    with pytest.raises(LazyflowError, match="sample_lazyflow: a bespoke solver runs on the times it was fitted on"):
        sample_lazyflow(lambda x, s: x, torch.zeros(2, 3), torch.tensor([1.0, 0.5, 0.0]), integrator="bespoke")
    with pytest.raises(LazyflowError, match="ComfyUI node: a bespoke solver runs on the times it was fitted on"):
        sampler_options("linear", "bespoke", 1.0)
