"""The SymPy printer of the kernels: SymPy expressions -> plain-PyTorch source text.

Most functions print by a table (:data:`FUNCTION_TEMPLATES`, :data:`EXTREMA`) from which
:class:`KernelPrinter` gets one ``_print_<name>`` method per entry; the methods that decide something
(float literals, ``t - 1``, the logarithm) are written out.
"""
from __future__ import annotations

from typing import Callable

import sympy as sp
from sympy.printing.pytorch import TorchPrinter

from .symbols import t, t_next

__all__ = ["KernelPrinter", "FUNCTION_TEMPLATES", "EXTREMA", "unprintable"]

#: SymPy function (class name) -> its kernel text, a template over the printed arguments {0}, {1}, ...
FUNCTION_TEMPLATES: dict[str, str] = {
    "Abs": "torch.abs({0})",
    "sign": "torch.sign({0})",
    "exp": "torch.exp({0})",
    "atan": "torch.atan({0})",
    "erf": "torch.erf({0})",
    "erfc": "torch.erfc({0})",
    "erfinv": "torch.erfinv({0})",
    "sinh": "torch.sinh({0})",
    "cosh": "torch.cosh({0})",
    "tanh": "torch.tanh({0})",
    # the reciprocal functions, which torch lacks, and their inverses
    "cot": "torch.reciprocal(torch.tan({0}))",
    "sec": "torch.reciprocal(torch.cos({0}))",
    "csc": "torch.reciprocal(torch.sin({0}))",
    "coth": "torch.reciprocal(torch.tanh({0}))",
    "sech": "torch.reciprocal(torch.cosh({0}))",
    "csch": "torch.reciprocal(torch.sinh({0}))",
    "acot": "torch.atan(torch.reciprocal({0}))",
    "asec": "torch.acos(torch.reciprocal({0}))",
    "acsc": "torch.asin(torch.reciprocal({0}))",
    "acoth": "torch.atanh(torch.reciprocal({0}))",
    "asech": "torch.acosh(torch.reciprocal({0}))",
    "acsch": "torch.asinh(torch.reciprocal({0}))",
    # codegen's _finite_or(value, fallback): the kernel helper of the same name
    "_finite_or": "_finite_or({0}, {1})",
}

#: Max/Min -> (the pairwise torch function, the torch.clamp keyword a numeric argument goes to)
EXTREMA: dict[str, tuple[str, str]] = {
    "Max": ("maximum", "min"),
    "Min": ("minimum", "max"),
}


class KernelPrinter(TorchPrinter):
    """TorchPrinter for kernels: numeric constants as float literals (``torch.sqrt(2)`` fails on ints),
    parameters as plain names, and the functions SymPy may produce from the parser's whitelist."""

    def _print(self, expr, **kwargs) -> str:
        if _is_float_constant(expr):
            return repr(float(sp.N(expr, 20)))
        return super()._print(expr, **kwargs)

    def parenthesize(self, item, level, strict=False) -> str:
        # a positive float literal binds like an atom: 0.5*t, not (0.5)*t
        if _is_float_constant(item) and item.is_positive:
            return self._print(item)
        return super().parenthesize(item, level, strict)

    def _print_Add(self, expr, order=None) -> str:
        # t - 1 as -(1 - t): the same value, but -0.0 at t = 1, so that 1/(t - 1) there is -inf, the limit
        # from inside (0, 1) (exp(t/(t - 1)) -> 0, not inf)
        if len(expr.args) == 2 and sp.S.NegativeOne in expr.args:
            other = expr.args[0] if expr.args[1] == -1 else expr.args[1]
            if other in (t, t_next):
                return f"-(1 - {self._print(other)})"
        return super()._print_Add(expr, order=order)

    def _print_log(self, expr) -> str:
        arg = expr.args[0]
        exponent = _one_plus_exp(arg, -1)
        if exponent is not None:            # log(1 - e^u) = log(-expm1(u)): no cancellation near u = 0
            return f"torch.log(-torch.expm1({self._print(exponent)}))"
        exponent = _one_plus_exp(arg, 1)
        if exponent is not None:            # log(1 + e^u) without overflow for large u
            return f"_log1p_exp({self._print(exponent)})"
        return f"torch.log({self._print(arg)})"

    def _templated(self, expr, template: str) -> str:
        """``template`` with the printed arguments of ``expr`` in place of {0}, {1}, ..."""
        return template.format(*(self._print(arg) for arg in expr.args))

    def _extremum(self, expr, function: str, clamp: str) -> str:
        """Max/Min: the tensor arguments through the pairwise ``function``, a number through torch.clamp."""
        numbers = [a for a in expr.args if a.is_number]
        tensors = [self._print(a) for a in expr.args if not a.is_number]
        text = tensors[0]
        for other in tensors[1:]:
            text = f"torch.{function}({text}, {other})"
        if numbers:
            text = f"torch.clamp({text}, {clamp}={self._print(numbers[0])})"
        return text


PrintMethod = Callable[[KernelPrinter, sp.Basic], str]


def _template_method(template: str) -> PrintMethod:
    def method(self: KernelPrinter, expr: sp.Basic) -> str:
        return self._templated(expr, template)

    return method


def _extremum_method(function: str, clamp: str) -> PrintMethod:
    def method(self: KernelPrinter, expr: sp.Basic) -> str:
        return self._extremum(expr, function, clamp)

    return method


def _install_table_methods(printer: type[KernelPrinter]) -> None:
    """One ``_print_<name>`` method on ``printer`` per entry of the tables (SymPy dispatches on the name)."""
    methods = {name: _template_method(template) for name, template in FUNCTION_TEMPLATES.items()}
    methods.update({name: _extremum_method(function, clamp) for name, (function, clamp) in EXTREMA.items()})
    for name, method in methods.items():
        if f"_print_{name}" in vars(printer):
            raise TypeError(f"{printer.__name__} writes _print_{name} out: {name!r} has no place in a table")
        method.__name__ = f"_print_{name}"
        method.__qualname__ = f"{printer.__qualname__}._print_{name}"
        setattr(printer, method.__name__, method)


_install_table_methods(KernelPrinter)


def unprintable(expr: sp.Expr) -> str | None:
    """The name of the first function in ``expr`` that KernelPrinter cannot print, or None."""
    printer = KernelPrinter()
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Function) or isinstance(node, sp.core.function.AppliedUndef):
            try:
                printer.doprint(node)
            except Exception:  # noqa: BLE001 - PrintMethodNotImplementedError and friends
                return type(node).__name__
    try:
        printer.doprint(expr)
    except Exception:  # noqa: BLE001
        return type(expr).__name__
    return None


def _one_plus_exp(expr: sp.Expr, sign: int) -> sp.Expr | None:
    """u when ``expr`` is 1 + sign e^u (sign = 1 or -1), else None."""
    if not (isinstance(expr, sp.Add) and len(expr.args) == 2 and sp.S.One in expr.args):
        return None
    other = expr.args[0] if expr.args[1] == 1 else expr.args[1]
    term = -other if sign < 0 else other
    return term.args[0] if isinstance(term, sp.exp) and term.args[0].free_symbols else None


def _is_float_constant(expr) -> bool:
    return isinstance(expr, sp.Expr) and expr.is_number and not expr.is_Integer and bool(expr.is_real)
