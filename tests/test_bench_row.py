"""The bench's typed row: every committed bench JSON reads into :class:`BenchRow` and writes back the same row,
key for key and in the same order (the plots and tables read those files); a row keeps each metric under its
own name while the JSON's ``"fd"`` holds the primary one."""
import json
from pathlib import Path

import pytest

from lazyflow.runtime.evaluation.bench_row import BenchRow

FIGURES = Path(__file__).resolve().parents[1] / "figures"
BENCH_JSONS = sorted(p for p in FIGURES.rglob("*.json") if "rows" in json.loads(p.read_text()))


def test_the_committed_bench_jsons_are_found():
    names = {p.relative_to(FIGURES).as_posix() for p in BENCH_JSONS}
    assert {"bench_digits.json", "bench_gmm64.json", "testbeds/bench_cond-mlp.json"} <= names


@pytest.mark.parametrize("path", BENCH_JSONS, ids=lambda p: p.relative_to(FIGURES).as_posix())
def test_a_committed_bench_json_round_trips_through_the_typed_row(path):
    result = json.loads(path.read_text())
    for row in [*result["rows"], *result.get("tuned_rows", [])]:
        typed = BenchRow.from_json(row, result["metrics"])
        back = typed.to_json()
        assert back == row and list(back) == list(row), row["method"]
        assert typed.primary == result["metrics"][0] and typed.primary_score == row["fd"]
        assert all(typed.score(metric) == row.get(metric) for metric in result["metrics"])


def test_a_row_names_each_metric_and_writes_the_primary_one_as_fd():
    row = BenchRow("linear/euler/uniform", False, False, 4, 4, "path", 0.5, {"path": 0.25},
                   path_halves=(0.2, 0.3), sample_args=("--steps", "4"), stats="full")
    out = row.with_details(choice={"grid": "uniform"}).to_json()
    assert out == {"method": "linear/euler/uniform", "peer": False, "stochastic": False, "nfe": 4, "budget": 4,
                   "fd": 0.25, "seconds": 0.5, "path": 0.25, "path_halves": [0.2, 0.3], "sample_args": ["--steps", "4"],
                   "stats": "full", "choice": {"grid": "uniform"}}
    assert row.score("fd") is None and "choice" not in row.details          # frozen: with_details makes a new row
    failed = BenchRow("x", True, False, 4, 4, "fd", 0.0, error="RuntimeError: no")
    assert failed.to_json()["fd"] is None and failed.to_json()["error"] == "RuntimeError: no"
