"""A calculator tool: exact arithmetic on an expression, safe to run in-process.

:func:`evaluate` parses the expression with :mod:`ast` and computes it with exact fractions: numbers (integers and
decimals), ``+ - * / // % **``, parentheses, unary signs and the functions ``abs``, ``round``, ``min``, ``max``
and ``sqrt`` (exact for perfect squares, else a float). Nothing else is evaluated (no names, attributes, calls of
other functions), so it cannot touch the process. Sizes are bounded so that a call cannot run long: exponents up
to 1,000 in magnitude, results and operands up to 10**100, expressions up to 500 characters. A bad expression
raises :class:`CalculatorError`, which a tool call turns into an ``execution_failed`` observation.

The result prints as an integer when it is one, else as a decimal (``7/2`` -> ``3.5``, ``1/3`` ->
``0.3333333333``, ten significant digits after the point at most).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from fractions import Fraction
from typing import Final

from tinkerflow.errors import ValidationError
from tinkerflow.tools.registry import Tool

__all__ = ["CALCULATOR", "CalculatorError", "calculator", "evaluate", "format_number"]

MAX_CHARS: Final = 500
MAX_EXPONENT: Final = 1000
MAX_MAGNITUDE: Final = Fraction(10) ** 100

_BINARY: Final[dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: operator.mod,
}


class CalculatorError(ValidationError):
    """An expression the calculator refuses or cannot compute."""


def _fail(problem: str, fix: str = "") -> CalculatorError:
    return CalculatorError("calculator", "expression", problem, fix)


def _checked(value: Fraction) -> Fraction:
    if abs(value) > MAX_MAGNITUDE:
        raise _fail("the result is larger than 10**100.")
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        if base < 0:
            raise _fail("a fractional power of a negative number is not real.")
        return _checked(Fraction(float(base) ** float(exponent)))
    if abs(exponent) > MAX_EXPONENT:
        raise _fail(f"exponents are limited to {MAX_EXPONENT} in magnitude.")
    if base == 0 and exponent < 0:
        raise _fail("division by zero.")
    if abs(base) > 1 and abs(exponent) * math.log10(abs(float(base))) > 101:
        raise _fail("the result is larger than 10**100.")
    return _checked(base ** int(exponent))


def _sqrt(value: Fraction) -> Fraction:
    if value < 0:
        raise _fail("the square root of a negative number is not real.")
    numerator, denominator = math.isqrt(value.numerator), math.isqrt(value.denominator)
    if numerator * numerator == value.numerator and denominator * denominator == value.denominator:
        return Fraction(numerator, denominator)
    return Fraction(math.sqrt(value))


def _round(value: Fraction, digits: Fraction = Fraction(0)) -> Fraction:
    if digits.denominator != 1 or not 0 <= digits <= 20:
        raise _fail("round() takes a whole number of digits between 0 and 20.")
    return Fraction(round(value, int(digits)))


_FUNCTIONS: Final[dict[str, Callable[..., Fraction]]] = {
    "abs": lambda value: abs(value),
    "round": _round,
    "min": lambda *values: min(values),
    "max": lambda *values: max(values),
    "sqrt": _sqrt,
}


def _call(node: ast.Call) -> Fraction:
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if name not in _FUNCTIONS or node.keywords:
        raise _fail(f"unknown function {ast.unparse(node.func)!r}.", f"use one of {', '.join(_FUNCTIONS)}.")
    args = [_eval(arg) for arg in node.args]
    if not args or (name in ("abs", "sqrt") and len(args) != 1) or (name == "round" and len(args) > 2):
        raise _fail(f"{name}() got {len(args)} arguments.")
    return _checked(_FUNCTIONS[name](*args))


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise _fail("the number is too large.")
        return _checked(Fraction(node.value) if isinstance(node.value, int) else Fraction(str(node.value)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _power(_eval(node.left), _eval(node.right))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if right == 0 and isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod):
            raise _fail("division by zero.")
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call):
        return _call(node)
    raise _fail(
        f"{ast.unparse(node)!r} is not arithmetic.",
        "use numbers, + - * / // % **, parentheses and abs, round, min, max, sqrt.",
    )


def format_number(value: Fraction) -> str:
    """An integer as itself, anything else as a decimal with at most ten digits after the point."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.10f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def evaluate(expression: str) -> Fraction:
    """The exact value of ``expression`` (see the module docstring)."""
    if not isinstance(expression, str) or not expression.strip():
        raise _fail("is empty.", "write an arithmetic expression such as '12 * (3 + 4)'.")
    if len(expression) > MAX_CHARS:
        raise _fail(f"is longer than {MAX_CHARS} characters.")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        raise _fail(f"is not a valid expression ({error.msg}).") from error
    except (RecursionError, MemoryError) as error:
        raise _fail("is nested too deeply.") from error
    try:
        return _eval(tree)
    except (OverflowError, RecursionError) as error:
        raise _fail("the result is too large or nested too deeply.") from error


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Args:
        expression: the expression, e.g. "12 * (3 + 4) / 5"; allowed are numbers, + - * / // % ** and
            parentheses, and the functions abs, round, min, max and sqrt.
    """
    return format_number(evaluate(expression))


#: The calculator as a tool (a 5-second limit under a timed executor; it never needs that long).
CALCULATOR: Final = Tool.from_function(calculator, timeout_s=5.0)
