"""A varied set of valid schedules for formula tests (presets plus hand-written ones)."""
from lazyflow.derive import PRESETS, from_expressions

CUSTOM = [
    from_expressions("1 - t**2", "t", "ode", name="quad-alpha"),
    from_expressions("(1 - t)**3", "1 - (1 - t)**3", "optimal", name="cubic"),
    from_expressions("cos(pi*t/2)**2", "sin(pi*t/2)", "sqrt(t)", name="cos2"),
    from_expressions("cos(pi*t/2)", "sin(pi*t/2)", "lazy", data_var=2, name="cosine-lazy-v2"),
    from_expressions("exp(-t/(1 - t + 1/10)) - t*exp(-10)", "t", "ode", name="exp-ish"),
]
# presets with parameters (sd3, score-vp, poly) at their default values: the numeric checks need numbers;
# test_formulas.test_symbolic_parameters_agree_with_their_values covers the symbolic derivation
ALL = [spec.substituted() for spec in PRESETS.values()] + CUSTOM
