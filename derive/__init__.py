"""lazyflow.derive: SymPy derivations and code generation for any interpolant schedule (never imports torch).
The math behind every formula is in derive/MATH.md.

    >>> from lazyflow.derive import preset, derive
    >>> derive(preset("linear")).eps_star
    (1 - t)/t
"""
from .conversion import Conversion, convert
from ..errors import ExpressionError, LazyflowError, SpecError
from .formulas import PREDICTIONS, Formulas, derive
from .gaussian_frame import (centred_drift, centred_lazy_condition, direction_propagator, direction_rate,
                             gaussian_mean_drift, gaussian_mean_eta_x, residual_at_end, residual_at_start)
from .lazy import solve_lazy, solve_lazy_branches, solve_lazy_with_notes, zero_drift_residual
from .parse import parse_expression
from .schedule import PRESETS, ScheduleSpec, from_expressions, from_toml, preset, resolve, spec_from_kernel_file
from .validate import Validation, validate

__all__ = ["Conversion", "convert", "ExpressionError", "LazyflowError", "SpecError", "PREDICTIONS", "Formulas", "derive",
           "centred_drift", "centred_lazy_condition", "direction_propagator", "direction_rate", "gaussian_mean_drift",
           "gaussian_mean_eta_x", "residual_at_end", "residual_at_start", "solve_lazy", "solve_lazy_branches", "solve_lazy_with_notes", "zero_drift_residual", "parse_expression", "PRESETS", "ScheduleSpec",
           "from_expressions", "from_toml", "preset", "resolve", "spec_from_kernel_file", "Validation", "validate"]
