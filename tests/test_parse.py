"""Safe parsing: the whitelist accepts the documented grammar and refuses everything else by name."""
import pytest
import sympy as sp

from lazyflow.derive import ExpressionError, from_expressions, parse_expression
from lazyflow.derive.symbols import t


@pytest.mark.parametrize("text, expected", [
    ("1 - t", 1 - t),
    ("cos(pi*t/2)", sp.cos(sp.pi * t / 2)),
    ("sqrt(t*(1 - t))", sp.sqrt(t * (1 - t))),
    ("exp(-t**2) * E", sp.exp(-t**2) * sp.E),
    ("atan(t) + tanh(t) + erf(t) + log(1 + t)", sp.atan(t) + sp.tanh(t) + sp.erf(t) + sp.log(1 + t)),
    ("0.1 * t", sp.Rational(1, 10) * t),
    ("-t + +t", sp.Integer(0)),
])
def test_accepts_whitelisted_grammar(text, expected):
    assert sp.simplify(parse_expression(text) - expected) == 0


def test_named_parameters():
    assert parse_expression("k*t", {"k": sp.Integer(3)}) == 3 * t


@pytest.mark.parametrize("text, fragment", [
    ("__import__('os')", "dunder name '__import__'"),
    ("t.__class__", "attribute access"),
    ("os.system('ls')", "only calls of whitelisted functions"),
    ("foo(t)", "unknown function 'foo'"),
    ("s * t", "unknown symbol 's'"),
    ("t +", "syntax error"),
    ("lambda: 1", "Lambda is not allowed"),
    ("[t]", "List is not allowed"),
    ("'t'", "literal 't' is not a number"),
    ("t if t else 1", "IfExp is not allowed"),
    ("t // 2", "operator FloorDiv is not allowed"),
    ("sin", "used without a call"),
    ("sin(t, t)", "exactly one positional argument"),
    ("", "empty expression"),
    ("True", "not a number"),
])
def test_refuses_with_the_reason(text, fragment):
    with pytest.raises(ExpressionError, match=None) as info:
        parse_expression(text, what="alpha")
    assert fragment in str(info.value)
    assert str(info.value).startswith("alpha:")


def test_never_calls_eval(monkeypatch):
    import builtins

    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec/sympify must not be called on user text")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(sp, "sympify", forbidden)
    assert parse_expression("sqrt(t)*exp(-t)") == sp.sqrt(t) * sp.exp(-t)


def test_parameter_names_are_checked():
    with pytest.raises(ExpressionError, match="clashes"):
        parse_expression("t", {"sin": sp.Integer(1)})
    with pytest.raises(Exception, match="not a plain identifier"):
        from_expressions("1 - t", "t", params={"__x": 1})
