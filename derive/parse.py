"""Safe parsing of user expressions into SymPy, with bounded work for any input.

User text is parsed with Python's :mod:`ast` module and every node is checked against a
whitelist before it is turned into SymPy objects by hand.  Nothing reaches ``eval``,
``exec`` or ``sympify``.

Every input ends in a SymPy expression or an :class:`ExpressionError`, quickly and in bounded
memory.  The declared limits (checked before any SymPy object is built):

- the text: at most ``MAX_LENGTH`` characters, printable ASCII and white space only (no
  NUL bytes; no unicode, which Python's parser would NFKC-normalise: a full-width ``ｔ`` is
  refused, never read as ``t``);
- nesting: at most ``MAX_NESTING`` levels of brackets and at most ``MAX_NESTING`` unary
  operators in a row (measured in the text, without recursion), and a syntax tree at most
  ``MAX_TREE_DEPTH`` deep (walked iteratively; the conversion is iterative too);
- numbers: literals at most ``MAX_LITERAL`` in magnitude; every constant subexpression at most
  ``MAX_CONSTANT`` in magnitude and finite (no ``1/0``, ``0**-1``, ``log(0)``: refused as
  "division by zero" / "not finite");
- powers: a number raised to a number only when the exact result stays small,
  ``|exponent| * max(|log10 |base||, log10 of the largest integer in the base) <= MAX_POWER_DIGITS``
  (estimated in floating point before SymPy folds it, so ``10**(10**10)`` is never built);
  an expression in ``t`` raised to a numeric exponent only when ``|exponent| <= MAX_SYMBOLIC_EXPONENT``.
"""
from __future__ import annotations

import ast
import cmath
import math
import threading
import unicodedata
import warnings
from typing import Mapping

import sympy as sp

from ..errors import ExpressionError
from .symbols import t

__all__ = ["ExpressionError", "parse_expression", "as_expression", "ALLOWED_FUNCTIONS", "ALLOWED_CONSTANTS",
           "MAX_LENGTH", "MAX_NESTING", "MAX_TREE_DEPTH", "MAX_LITERAL", "MAX_CONSTANT", "MAX_POWER_DIGITS",
           "MAX_SYMBOLIC_EXPONENT"]


ALLOWED_FUNCTIONS = {
    "sqrt": sp.sqrt, "exp": sp.exp, "log": sp.log,
    "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "atan": sp.atan,
    "cot": sp.cot, "sec": sp.sec, "csc": sp.csc,
    "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "erf": sp.erf, "erfc": sp.erfc,
}
ALLOWED_CONSTANTS = {"pi": sp.pi, "E": sp.E}

#: longest accepted expression, in characters
MAX_LENGTH = 2000
#: deepest bracket nesting, and longest run of unary operators (``- - - t``)
MAX_NESTING = 50
#: deepest accepted syntax tree (a chain a + b - c + ... or a * b / c ... counts as one level)
MAX_TREE_DEPTH = 100
#: largest magnitude of a number literal
MAX_LITERAL = 10**15
#: largest magnitude of any constant subexpression (kept well inside float64)
MAX_CONSTANT = 1e300
#: a number raised to a number is folded only if the result has at most about this many digits
MAX_POWER_DIGITS = 300
#: largest |exponent| of a numeric power of an expression in t
MAX_SYMBOLIC_EXPONENT = 100

# kept for callers of the old private name
_MAX_LENGTH = MAX_LENGTH

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a ** b,
}
_BINOP_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_WHITESPACE = " \t\n\r"
_NON_FINITE = (sp.zoo, sp.oo, sp.S.NegativeInfinity, sp.nan)


def _shadow_erf(z: complex) -> complex:
    if z.imag != 0:
        raise ValueError("erf of a non-real number is not bounded here")
    return complex(math.erf(z.real))


def _shadow_erfc(z: complex) -> complex:
    if z.imag != 0:
        raise ValueError("erfc of a non-real number is not bounded here")
    return complex(math.erfc(z.real))


#: floating-point shadows of the functions, used only to bound the size of constants
_SHADOW_FUNCTIONS = {
    "sqrt": cmath.sqrt, "exp": cmath.exp, "log": cmath.log,
    "sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan, "atan": cmath.atan,
    "cot": lambda z: 1 / cmath.tan(z), "sec": lambda z: 1 / cmath.cos(z), "csc": lambda z: 1 / cmath.sin(z),
    "sinh": cmath.sinh, "cosh": cmath.cosh, "tanh": cmath.tanh, "erf": _shadow_erf, "erfc": _shadow_erfc,
}


def parse_expression(text: str, params: Mapping[str, sp.Expr] | None = None,
                     *, variables: Mapping[str, sp.Symbol] | None = None,
                     what: str = "expression") -> sp.Expr:
    """Parse ``text`` into a SymPy expression in ``t``.

    ``params`` maps declared parameter names to their (numeric or symbolic) values;
    ``variables`` adds further allowed symbols (default: only ``t``).
    Raises :class:`ExpressionError` naming the offending construct; no other exception
    escapes, and the work done is bounded by the module's declared limits.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"{what}: expected a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"{what}: expression longer than {MAX_LENGTH} characters ({len(text)})")
    _check_characters(text, what)
    if not text.strip():
        raise ExpressionError(f"{what}: empty expression")
    _check_nesting(text, what)
    names: dict[str, sp.Expr] = {"t": t} if variables is None else dict(variables)
    names.update(ALLOWED_CONSTANTS)
    for key, value in (params or {}).items():
        if key in ALLOWED_FUNCTIONS or key in names:
            raise ExpressionError(f"{what}: parameter name {key!r} clashes with a reserved name")
        names[key] = value
    source = text.strip()
    try:
        if threading.current_thread() is threading.main_thread():
            with warnings.catch_warnings():
                # "1if t else 2", "1lambda": Python only warns; here such text is a syntax error.
                # (catch_warnings changes process-wide state, so only on the main thread.)
                warnings.simplefilter("error", SyntaxWarning)
                warnings.simplefilter("error", DeprecationWarning)
                tree = ast.parse(source, mode="eval")
        else:
            tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"{what}: syntax error in {_excerpt(text)} at column {err.offset}: {err.msg}") from None
    except (RecursionError, MemoryError, ValueError, OverflowError, SyntaxWarning, DeprecationWarning) as err:
        raise ExpressionError(f"{what}: cannot parse {_excerpt(text)} ({type(err).__name__}: {err})") from None
    converter = _Converter(names, what, source)
    try:
        converter.check(tree)
        return converter.convert(tree.body)
    except ExpressionError:
        raise
    except Exception as err:  # noqa: BLE001 - the contract: nothing but ExpressionError escapes
        raise ExpressionError(f"{what}: cannot convert {_excerpt(text)} ({type(err).__name__}: {err})") from None


def _excerpt(text: str, limit: int = 120) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _check_characters(text: str, what: str) -> None:
    """Printable ASCII and ordinary white space only; name the first offending character."""
    if text.isascii() and all(ch.isprintable() or ch in _WHITESPACE for ch in text):
        return
    for column, ch in enumerate(text, start=1):
        if ch == "\x00":
            raise ExpressionError(f"{what}: NUL byte at column {column} in {_excerpt(text)}")
        if not ch.isascii():
            folded = unicodedata.normalize("NFKC", ch)
            alias = f", a look-alike of {folded!r}" if folded != ch and folded.isascii() else ""
            try:
                char_name = unicodedata.name(ch)
            except ValueError:
                char_name = "unnamed"
            raise ExpressionError(f"{what}: non-ASCII character {ch!r} (U+{ord(ch):04X} {char_name}{alias}) at "
                                  f"column {column} in {_excerpt(text)}; only ASCII text is accepted")
        if not (ch.isprintable() or ch in _WHITESPACE):
            raise ExpressionError(f"{what}: control character U+{ord(ch):04X} at column {column} in {_excerpt(text)}")


def _check_nesting(text: str, what: str) -> None:
    """Bracket depth and runs of unary operators, measured in the text before Python parses it."""
    depth = run = 0
    for column, ch in enumerate(text, start=1):
        if ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                raise ExpressionError(f"{what}: brackets nested deeper than {MAX_NESTING} levels "
                                      f"(at column {column}) in {_excerpt(text)}")
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        if ch in "+-~":
            run += 1
            if run > MAX_NESTING:
                raise ExpressionError(f"{what}: more than {MAX_NESTING} operators + - ~ in a row "
                                      f"(at column {column}) in {_excerpt(text)}")
        elif ch not in _WHITESPACE:
            run = 0


class _Converter:
    """Checks a parsed tree against the whitelist, then converts it bottom-up without recursion.

    Alongside each constant subexpression it keeps a complex floating-point "shadow" value, used
    only to bound sizes before SymPy folds anything (never as the result)."""

    def __init__(self, names: Mapping[str, sp.Expr], what: str, text: str):
        self.names, self.what, self.text = names, what, text
        self.shadows: dict[str, complex | None] = {}
        for key, value in names.items():
            self.shadows[key] = self._shadow_of(value)

    @staticmethod
    def _shadow_of(value: sp.Expr) -> complex | None:
        try:
            value = sp.S(value) if isinstance(value, (int, float)) else value
            if getattr(value, "free_symbols", {None}):
                return None
            return complex(value.evalf(17))
        except Exception:  # noqa: BLE001 - an unknown shadow only makes the size checks stricter
            return None

    def fail(self, message: str) -> ExpressionError:
        whole = _excerpt(self.text)
        if message.endswith(whole) or f"{whole} " in message or f"{whole})" in message:
            return ExpressionError(f"{self.what}: {message}")
        return ExpressionError(f"{self.what}: {message} in {whole}")

    def segment(self, node: ast.AST) -> str:
        piece = ast.get_source_segment(self.text, node) or type(node).__name__
        return piece if len(piece) <= 60 else piece[:57] + "..."

    # --- the whitelist, checked before any SymPy object is built -------------------------------

    def check(self, tree: ast.Expression) -> None:
        stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_TREE_DEPTH:
                raise self.fail(f"expression nested deeper than {MAX_TREE_DEPTH} levels")
            children = self._children(node)
            for child in reversed(children):
                # a left-associated chain a + b - c + ... (or a * b / c ...) is flat for SymPy: one level
                flat = child is children[0] and _same_chain(node, child)
                stack.append((child, depth if flat else depth + 1))

    def _children(self, node: ast.AST) -> list[ast.AST]:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(f"literal {_short_repr(value)} is not a number")
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(f"number {self.segment(node)} is not finite")
            if abs(value) > MAX_LITERAL:
                raise self.fail(f"number {self.segment(node)} is larger than the limit 10**15 in magnitude")
            return []
        if isinstance(node, ast.Name):
            if node.id.startswith("__"):
                raise self.fail(f"dunder name {node.id!r} is not allowed")
            if node.id in ALLOWED_FUNCTIONS:
                raise self.fail(f"function {node.id!r} used without a call")
            if node.id not in self.names:
                allowed = ", ".join(sorted(self.names))
                raise self.fail(f"unknown symbol {node.id!r} (allowed: {allowed})")
            return []
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise self.fail(f"operator {type(node.op).__name__} is not allowed (use + - * / **)")
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise self.fail(f"unary operator {type(node.op).__name__} is not allowed")
            return [node.operand]
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise self.fail("only calls of whitelisted functions by name are allowed")
            name = node.func.id
            if name.startswith("__"):
                raise self.fail(f"dunder name {name!r} is not allowed")
            if name not in ALLOWED_FUNCTIONS:
                allowed = ", ".join(sorted(ALLOWED_FUNCTIONS))
                raise self.fail(f"unknown function {name!r} (allowed: {allowed})")
            if node.keywords or len(node.args) != 1:
                raise self.fail(f"function {name!r} takes exactly one positional argument")
            return [node.args[0]]
        if isinstance(node, ast.Attribute):
            raise self.fail(f"attribute access '.{node.attr}' is not allowed")
        raise self.fail(f"{type(node).__name__} is not allowed")

    # --- the conversion (only whitelisted nodes reach it) --------------------------------------

    def convert(self, root: ast.AST) -> sp.Expr:
        values: list[tuple[sp.Expr, complex | None]] = []
        stack: list[tuple[ast.AST, list[ast.AST] | None]] = [(root, None)]
        while stack:
            node, operands = stack.pop()
            if operands is None:
                operands = _operands(node)
                stack.append((node, operands))
                stack.extend((child, None) for child in reversed(operands))
                continue
            count = len(operands)
            args = values[len(values) - count:] if count else []
            del values[len(values) - count:]
            if count > 2 and isinstance(node, ast.BinOp):
                values.append(self._build_chain(node, args))
            else:
                values.append(self._build(node, args))
        (expr, _shadow), = values
        if expr.has(*_NON_FINITE):
            raise self.fail(f"the expression is not finite (it evaluates to {expr})")
        self._check_result(expr)
        return expr

    def _build(self, node: ast.AST, args: list[tuple[sp.Expr, complex | None]]) -> tuple[sp.Expr, complex | None]:
        if isinstance(node, ast.Constant):
            value = node.value
            expr = sp.Integer(value) if isinstance(value, int) else sp.Rational(repr(value))
            return expr, complex(value)
        if isinstance(node, ast.Name):
            return self.names[node.id], self.shadows.get(node.id)
        if isinstance(node, ast.UnaryOp):
            (expr, shadow), = args
            if isinstance(node.op, ast.USub):
                return -expr, (None if shadow is None else -shadow)
            return expr, shadow
        if isinstance(node, ast.Call):
            (arg, shadow), = args
            name = node.func.id
            result = ALLOWED_FUNCTIONS[name](arg)
            return self._finish(node, result, _apply(_SHADOW_FUNCTIONS[name], shadow))
        (left, ls), (right, rs) = args
        op = type(node.op)
        if op is ast.Pow:
            self._check_power(node, left, ls, right, rs)
        elif op is ast.Div and right == 0:
            raise self.fail(f"division by zero in {self.segment(node)!r}")
        result = _BINOPS[op](left, right)
        return self._finish(node, result, _binop_shadow(op, ls, rs))

    def _build_chain(self, node: ast.BinOp, args: list[tuple[sp.Expr, complex | None]]
                     ) -> tuple[sp.Expr, complex | None]:
        """A long chain a + b - c ... (or a * b / c ...) built in one n-ary call: linear, not quadratic, work."""
        ops = [type(link.op) for link in reversed(_spine(node))]
        (first, shadow), rest = args[0], args[1:]
        terms = [first]
        additive = ops[0] in (ast.Add, ast.Sub)
        for op, (expr, es) in zip(ops, rest):
            if op is ast.Div and expr == 0:
                raise self.fail(f"division by zero in {self.segment(node)!r}")
            terms.append(-expr if op is ast.Sub else 1 / expr if op is ast.Div else expr)
            shadow = _binop_shadow(op, shadow, es)
        result = sp.Add(*terms) if additive else sp.Mul(*terms)
        return self._finish(node, result, shadow)

    def _finish(self, node: ast.AST, result: sp.Expr, shadow: complex | None) -> tuple[sp.Expr, complex | None]:
        if _non_finite(result):
            if isinstance(node, ast.BinOp) and (type(node.op) is ast.Div or type(node.op) is ast.Pow):
                raise self.fail(f"division by zero in {self.segment(node)!r} (it evaluates to {result})")
            raise self.fail(f"{self.segment(node)!r} is not finite (it evaluates to {result})")
        if result.free_symbols:
            return result, None
        if shadow is None:
            # a constant that SymPy formed by cancelling symbolic operands (t - t, t*a/t): bound it directly
            shadow = self._shadow_of(result)
        if shadow is None:
            # a constant whose size we could not bound in floating point
            raise self.fail(f"cannot bound the constant {self.segment(node)!r}")
        if not (cmath.isfinite(shadow) and abs(shadow) <= MAX_CONSTANT * (1 + 1e-9)):
            size = "not finite in floating point" if not cmath.isfinite(shadow) else f"about {abs(shadow):.3g}"
            raise self.fail(f"constant {self.segment(node)!r} is too large ({size}; the limit is "
                            f"{MAX_CONSTANT:.0e} in magnitude)")
        return result, shadow

    def _check_power(self, node: ast.BinOp, base: sp.Expr, bs: complex | None,
                     exponent: sp.Expr, es: complex | None) -> None:
        if exponent.free_symbols:
            return                                   # nothing is folded: t**t, 2**t
        if es is None:
            raise self.fail(f"cannot bound the exponent of {self.segment(node)!r}")
        if base.free_symbols:
            if abs(es) > MAX_SYMBOLIC_EXPONENT:
                raise self.fail(f"exponent {self.segment(node.right)!r} of {self.segment(node)!r} is too large "
                                f"(|exponent| = {abs(es):.3g}; an expression in t may be raised to a numeric "
                                f"power of at most {MAX_SYMBOLIC_EXPONENT} in magnitude)")
            return
        if bs is None:
            raise self.fail(f"cannot bound the base of {self.segment(node)!r}")
        if bs == 0:
            if es.real < 0 or (es.real == 0 and es.imag != 0):
                raise self.fail(f"division by zero in {self.segment(node)!r} (zero to a negative power)")
            return
        digits = max(abs(math.log10(abs(bs))), _integer_digits(base))
        estimate = abs(es) * digits
        if estimate > MAX_POWER_DIGITS:
            raise self.fail(f"power {self.segment(node)!r} is too large to evaluate (|exponent| * log10|base| "
                            f"is about {estimate:.3g}; the limit is {MAX_POWER_DIGITS})")

    def _check_result(self, expr: sp.Expr) -> None:
        """Powers SymPy may have combined ((t**100)**100 -> t**10000) obey the same limit."""
        for power in expr.atoms(sp.Pow):
            exponent = power.exp
            if power.base.free_symbols and exponent.is_Number and abs(exponent) > MAX_SYMBOLIC_EXPONENT:
                raise self.fail(f"the power {sp.sstr(power)[:60]} has an exponent larger than "
                                f"{MAX_SYMBOLIC_EXPONENT} in magnitude")


_CHAINS = ({ast.Add, ast.Sub}, {ast.Mult, ast.Div})


def _same_chain(parent: ast.AST, child: ast.AST) -> bool:
    if not (isinstance(parent, ast.BinOp) and isinstance(child, ast.BinOp)):
        return False
    return any(type(parent.op) in chain and type(child.op) in chain for chain in _CHAINS)


def _non_finite(expr: sp.Expr) -> bool:
    """zoo, oo or nan at the top of ``expr`` or among its arguments (the operands were checked already)."""
    return any(expr is bad or any(arg is bad for arg in expr.args) for bad in _NON_FINITE)


#: chains with more operands than this are built n-ary (shorter ones fold left, exactly as Python would)
_CHAIN_FOLD = 32


def _spine(node: ast.BinOp) -> list[ast.BinOp]:
    """The BinOp nodes of the left-associated chain headed by ``node`` (head first)."""
    links = [node]
    while _same_chain(links[-1], links[-1].left):
        links.append(links[-1].left)
    return links


def _operands(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BinOp):
        links = _spine(node) if any(type(node.op) in chain for chain in _CHAINS) else [node]
        if len(links) + 1 > _CHAIN_FOLD:
            return [links[-1].left] + [link.right for link in reversed(links)]
        return [node.left, node.right]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.Call):
        return [node.args[0]]
    return []


def _integer_digits(expr: sp.Expr) -> float:
    """log10 of the largest numerator or denominator among the rational numbers in ``expr``."""
    parts = [abs(part) for number in expr.atoms(sp.Rational) for part in (number.p, number.q) if part]
    return max((math.log10(part) for part in parts), default=0.0)


def _apply(fn, shadow: complex | None) -> complex | None:
    if shadow is None:
        return None
    try:
        return complex(fn(shadow))
    except OverflowError:
        return complex(math.inf)
    except (ValueError, ZeroDivisionError):
        return complex(math.nan)


def _binop_shadow(op: type, left: complex | None, right: complex | None) -> complex | None:
    if left is None or right is None:
        return None
    try:
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.Mult:
            return left * right
        if op is ast.Div:
            return left / right
        if right == 0:
            return complex(1.0)
        if left == 0:
            return complex(0.0) if right.real > 0 else complex(math.inf)
        return complex(cmath.exp(right * cmath.log(left)))
    except OverflowError:
        return complex(math.inf)
    except ZeroDivisionError:
        return complex(math.inf)
    except ValueError:
        return complex(math.nan)


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_expression(value: object, what: str, kind: str = "a SymPy expression") -> sp.Expr:
    """A number or SymPy expression given in code, as an expression; strings are refused (``sympify`` in
    strict mode converts no text: user text goes through :func:`parse_expression`)."""
    try:
        expr = sp.sympify(value, strict=True)
    except (sp.SympifyError, TypeError):
        raise ExpressionError(f"{what} must be {kind} (parse user text with parse_expression), got {value!r}") from None
    if not isinstance(expr, sp.Expr):
        raise ExpressionError(f"{what} must be an expression, got {value!r}")
    return expr
