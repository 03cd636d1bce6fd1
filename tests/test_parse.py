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


def test_declared_limits():
    from lazyflow.derive import parse as module

    assert (module.MAX_LENGTH, module.MAX_NESTING, module.MAX_TREE_DEPTH) == (2000, 50, 100)
    assert (module.MAX_LITERAL, module.MAX_POWER_DIGITS, module.MAX_SYMBOLIC_EXPONENT) == (10**15, 300, 100)
    assert module.MAX_CONSTANT == 1e300


def test_long_chains_equal_the_left_fold():
    """Chains longer than 32 operands are built n-ary (linear work); the result is the same expression."""
    terms = [f"t**{i % 7}/{i + 1}" for i in range(60)]
    folded = sp.Integer(0)
    for i in range(60):
        folded = folded + (1 if i % 2 == 0 else -1) * t ** (i % 7) / (i + 1)
    text = terms[0] + "".join(("-" if i % 2 else "+") + term for i, term in enumerate(terms[1:], start=1))
    assert parse_expression(text) == folded
    factors = "*".join(f"(t + {i})" for i in range(40)) + "/(t + 41)"
    assert parse_expression(factors) == sp.Mul(*[t + i for i in range(40)]) / (t + 41)


@pytest.mark.parametrize("text, fragment", [
    ("ｔ", "non-ASCII character 'ｔ'"),
    ("t\x00", "NUL byte"),
    ("1/0", "division by zero in '1/0'"),
    ("log(0)", "not finite"),
    ("-" * 1998 + "t", "more than 50 operators"),
    ("t**10**10**10", "too large to evaluate"),
    ("1lambda", "syntax error"),
])
def test_issue_9_parser_cases(text, fragment):
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, what="beta")
    assert fragment in str(info.value)
