"""The start study (runtime/evaluation/start_study.py): the ODE solves start where it says, at the states it says,
written out here from the scaled_linear betas; bad input is one line."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lazyflow.errors import LazyflowError
from lazyflow.runtime.core.data_stats import DataStats
from lazyflow.runtime.evaluation import start_study as study

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

MODEL = "discrete:gmm:5,dim=8"


def test_the_starts_are_timestep_999_log_snr_minus_5_and_the_gaussian_marginal(tmp_path, monkeypatch):
    abar = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2, 0)[-1]
    alpha, beta = float((1 - abar).sqrt()), float(abar.sqrt())
    mean, var = torch.linspace(-1, 1, 8, dtype=torch.float64), torch.linspace(0.5, 2, 8, dtype=torch.float64)
    stats = DataStats(kind="diag", mean=mean, var=var).save(tmp_path / "s.safetensors")
    seen, solve = [], study.path_reference

    def spy(model, src, x0, steps, *, t0, **options):
        seen.append((float(src.log_snr(torch.tensor([t0], dtype=torch.float64))[0]), x0.clone()))
        return solve(model, src, x0, steps, t0=t0, **options)

    monkeypatch.setattr(study, "path_reference", spy)
    lines: list[str] = []
    rows = study.start_study(MODEL, n=32, steps=40, data_stats=str(stats), log=lines.append)
    assert list(rows) == ["log snr -5", "training timestep 999 (diffusers' start)",
                          "training timestep 999, Gaussian marginal"]
    assert all(set(r) == {"fd", "sw", "weight_tv", "nll_gap"} for r in rows.values())
    (lam_a, z), (lam_b, z_b), (lam_c, marginal) = seen
    assert lam_a == pytest.approx(-5.0, abs=1e-9) and torch.equal(z, z_b)
    assert lam_b == pytest.approx(0.5 * float(torch.log(abar / (1 - abar))), abs=1e-9)
    assert lam_c == pytest.approx(lam_b, abs=1e-9)
    expected = (beta * mean + (alpha ** 2 + beta ** 2 * var).sqrt() * z) / alpha   # the solve starts at alpha x0
    torch.testing.assert_close(marginal, expected, rtol=1e-12, atol=1e-12)
    assert len(lines) == 3 + 3 and lines[3].startswith("| log snr -5 | -5 |")


def test_a_noise_model_on_a_zero_snr_table_has_no_timestep_999_start(monkeypatch):
    """Timestep 999 of a zero-terminal-snr table has snr 0, where a noise prediction says nothing: the study
    starts there no solve (as a bespoke fit does not start there)."""
    from lazyflow.runtime.core.beta_schedules import alphas_cumprod_of_config
    from lazyflow.runtime.core.discrete_schedule import discrete_schedule
    from lazyflow.runtime.models.registry import load_measured

    kind, loaded = load_measured(MODEL)
    zero = discrete_schedule(alphas_cumprod_of_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                                       "beta_end": 0.012, "rescale_betas_zero_snr": True}))
    monkeypatch.setattr(study, "load_measured", lambda model: (kind, replace(loaded, source=zero)))
    rows = study.start_study(MODEL, n=8, steps=4, log=lambda line: None)
    assert list(rows) == ["log snr -5"]


def test_bad_input_is_one_line(tmp_path, capsys):
    full = DataStats(kind="full", mean=torch.zeros(8, dtype=torch.float64), var=torch.ones(8, dtype=torch.float64),
                     basis=torch.eye(8, dtype=torch.float64)).save(tmp_path / "f.safetensors")
    with pytest.raises(LazyflowError, match="reads diag statistics"):
        study.start_study(MODEL, n=8, steps=4, data_stats=str(full), log=lambda line: None)
    assert study.main(["discrete:gmm:5,dim=8", "--n", "8", "--steps", "4", "--data-stats", str(full)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("start_study: error: --data-stats: the marginal start reads diag statistics") and err.count("\n") == 1
