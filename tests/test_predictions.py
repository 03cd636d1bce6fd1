"""The network predictions are one list (lazyflow/predictions.py): the formulas, the command line, the exact
models and the shipped kernels read it, and an unknown prediction is refused in one line naming the choices."""
from __future__ import annotations

import pytest

from lazyflow import parsers
from lazyflow.derive import formulas
from lazyflow.errors import LazyflowError, SpecError
from lazyflow.predictions import PREDICTIONS, check_prediction
from lazyflow.runtime import kernels
from lazyflow.runtime.models import gmm

CHOICES = "choose one of velocity, x, noise, score"


def test_every_reader_holds_the_one_list():
    assert PREDICTIONS == ("velocity", "x", "noise", "score")
    assert parsers.PREDICTIONS is PREDICTIONS and formulas.PREDICTIONS is PREDICTIONS and gmm.PREDICTIONS is PREDICTIONS


def test_the_shipped_kernels_constant_is_generated_from_it():
    for module in kernels.shipped():
        kernel = kernels.load_shipped(module)
        assert kernel.PREDICTIONS == PREDICTIONS, module
        assert all(callable(getattr(kernel, f"eta_{p}")) for p in PREDICTIONS), module


def test_an_unknown_prediction_is_one_line_naming_the_choices():
    from lazyflow.runtime.core.schedule import load_schedule

    assert check_prediction("x") == "x"
    with pytest.raises(SpecError, match=f"unknown prediction 'eps'; {CHOICES}$"):
        check_prediction("eps", error=SpecError)
    with pytest.raises(LazyflowError, match=f"unknown prediction 'eps'; {CHOICES}$"):
        load_schedule("linear").eta("eps", None)
    with pytest.raises(LazyflowError, match=f"unknown prediction 'eps'; {CHOICES}$"):
        gmm.load("gmm64", prediction="eps")


def test_the_command_line_offers_the_list(capsys):
    parser = parsers.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["sample", "--model", "digits", "--prediction", "eps"])
    err = capsys.readouterr().err
    assert "invalid choice: 'eps'" in err and "'velocity', 'x', 'noise', 'score'" in err and err.count("\n") == 1
