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
