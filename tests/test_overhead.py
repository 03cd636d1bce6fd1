"""bench-overhead's structure (no timings are asserted: they belong to the command's table)."""
import pytest

from lazyflow.cli import main
from lazyflow.runtime.evaluation.overhead import DATA_FAMILIES, FAMILIES, format_overhead, overhead_bench


def test_every_family_and_both_baselines_are_measured(one_torch_thread):
    result = overhead_bench("cpu", models=("mlp",), batches=(2,), steps=2, repeats=1, modes=("eager",), log=lambda s: None)
    runners = [row["runner"] for row in result["rows"]]
    assert runners[0] == "bare model calls" and "plain Euler loop" in runners
    assert sum(r.startswith("lazyflow") for r in runners) == len(FAMILIES) + len(DATA_FAMILIES)
    assert sum("data frame" in r for r in runners) == len(DATA_FAMILIES)
    assert all(row["calls"] == 2 and row["median_s"] > 0 for row in result["rows"])
    assert result["rows"][0]["overhead"] == 0
    assert "overhead" in format_overhead(result)


@pytest.mark.parametrize("flags,message", [(["--modes", "fast"], "unknown"), (["--repeats", "3"], "at least 5"),
                                           (["--batches", "0"], "positive"), (["--models", "vgg"], "unknown model")])
def test_bad_options_are_refused(capsys, flags, message):
    assert main(["bench-overhead", "--device", "cpu", *flags]) == 2
    assert message in capsys.readouterr().err


def test_the_frame_overhead_rows_and_their_memory(monkeypatch, one_torch_thread):
    """bench-overhead --frames at a small stand-in shape: one row per kind, and the memory column is the plan's
    tables exactly: A, a, 2 predictor and 2 corrector weights per step and direction, the mean and the variances
    (float32), plus (dct) the two DCT matrices, plus (lowrank) the basis and the rest."""
    from lazyflow.runtime.evaluation import frame_overhead as fo

    monkeypatch.setattr(fo, "FRAME_SHAPES", {"tiny": ((2, 8, 4), None, 1e6, 16), "packed": ((16, 3), (4, 4), 1e6, 16)})
    result = fo.frame_overhead(batches=(1,), repeats=1, rank=4, log=lambda s: None)
    rows = {(r["shape"], r["kind"]): r for r in result["rows"]}
    assert set(rows) == {(s, k) for s in ("tiny", "packed") for k in ("diag", "dct", "lowrank 4")}
    d, steps, mb = 64, result["steps"], 2**20
    assert rows["tiny", "diag"]["table_mb"] * mb == (6 * steps + 2) * d * 4
    assert rows["tiny", "dct"]["table_mb"] * mb == ((6 * steps + 2) * d + 8 * 8 + 4 * 4) * 4
    assert rows["packed", "dct"]["table_mb"] * mb == ((6 * steps + 2) * 48 + 2 * 4 * 4) * 4
    assert rows["tiny", "lowrank 4"]["table_mb"] * mb == ((6 * steps) * (4 + d) + d + 4 + d * 4 + d) * 4
    assert all(r["model_ms"] > 0 for r in rows.values()) and "overhead" in fo.format_frame_overhead(result)


def test_the_frame_overhead_refuses_a_device(capsys):
    assert main(["bench-overhead", "--frames", "--device", "cuda"]) == 2
    assert "CPU only" in capsys.readouterr().err
