"""Safe parsing of user expressions into SymPy.

User text is parsed with Python's :mod:`ast` module and every node is checked against a
whitelist before it is turned into SymPy objects by hand.  Nothing reaches ``eval``,
``exec`` or ``sympify``.
"""
from __future__ import annotations

import ast
from typing import Mapping

import sympy as sp

from .errors import ExpressionError
from .symbols import t

__all__ = ["ExpressionError", "parse_expression", "ALLOWED_FUNCTIONS", "ALLOWED_CONSTANTS"]


ALLOWED_FUNCTIONS = {
    "sqrt": sp.sqrt, "exp": sp.exp, "log": sp.log,
    "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "atan": sp.atan,
    "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "erf": sp.erf,
}
ALLOWED_CONSTANTS = {"pi": sp.pi, "E": sp.E}

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a ** b,
}
_MAX_LENGTH = 2000


def parse_expression(text: str, params: Mapping[str, sp.Expr] | None = None,
                     *, variables: Mapping[str, sp.Symbol] | None = None,
                     what: str = "expression") -> sp.Expr:
    """Parse ``text`` into a SymPy expression in ``t``.

    ``params`` maps declared parameter names to their (numeric or symbolic) values;
    ``variables`` adds further allowed symbols (default: only ``t``).
    Raises :class:`ExpressionError` naming the offending construct.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"{what}: expected a string, got {type(text).__name__}")
    if not text.strip():
        raise ExpressionError(f"{what}: empty expression")
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"{what}: expression longer than {_MAX_LENGTH} characters")
    names: dict[str, sp.Expr] = {"t": t} if variables is None else dict(variables)
    names.update(ALLOWED_CONSTANTS)
    for key, value in (params or {}).items():
        if key in ALLOWED_FUNCTIONS or key in names:
            raise ExpressionError(f"{what}: parameter name {key!r} clashes with a reserved name")
        names[key] = value
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"{what}: syntax error in {text!r} at column {err.offset}: {err.msg}") from None
    return _Converter(names, what, text).visit(tree.body)


class _Converter:
    def __init__(self, names: Mapping[str, sp.Expr], what: str, text: str):
        self.names, self.what, self.text = names, what, text

    def fail(self, message: str) -> ExpressionError:
        return ExpressionError(f"{self.what}: {message} in {self.text!r}")

    def visit(self, node: ast.AST) -> sp.Expr:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(f"literal {value!r} is not a number")
            return sp.Integer(value) if isinstance(value, int) else sp.Rational(repr(value))
        if isinstance(node, ast.Name):
            if node.id.startswith("__"):
                raise self.fail(f"dunder name {node.id!r} is not allowed")
            if node.id in ALLOWED_FUNCTIONS:
                raise self.fail(f"function {node.id!r} used without a call")
            if node.id not in self.names:
                allowed = ", ".join(sorted(self.names))
                raise self.fail(f"unknown symbol {node.id!r} (allowed: {allowed})")
            return self.names[node.id]
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.fail(f"operator {type(node.op).__name__} is not allowed (use + - * / **)")
            return op(self.visit(node.left), self.visit(node.right))
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return -self.visit(node.operand)
            if isinstance(node.op, ast.UAdd):
                return self.visit(node.operand)
            raise self.fail(f"unary operator {type(node.op).__name__} is not allowed")
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
            return ALLOWED_FUNCTIONS[name](self.visit(node.args[0]))
        if isinstance(node, ast.Attribute):
            raise self.fail(f"attribute access '.{node.attr}' is not allowed")
        raise self.fail(f"{type(node).__name__} is not allowed")
