"""The built-in tools: `current_time` and `calculate`.

Both are pure, offline and bounded: they finish in microseconds whatever the model sends, so they run on
the event loop as async handlers (the registry's timeout still wraps them).

`calculate` is a small arithmetic evaluator over Python's `ast`, never `eval`: it accepts numbers, `+ - * /
// % **`, unary signs, parentheses, the constants `pi`, `e`, `tau` and a short list of math functions.
Every step is size-checked before it runs, so `9**9**9` or `10**10**10` is refused at once instead of
computing a number with billions of digits.
"""

from __future__ import annotations

import ast
import math
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aria_engine.exceptions import ToolError
from aria_engine.tool_registry import Tool

__all__ = ["CALCULATE", "CURRENT_TIME", "builtin_tools", "evaluate"]

MAX_EXPRESSION_CHARS = 500
MAX_NODES = 200
MAX_INT_BITS = 4096  # about 1,230 decimal digits
MAX_FUNCTION_ARGS = 20
MAX_ROUND_DIGITS = 20

Number = int | float


# -- current_time ------------------------------------------------------------------------------------


async def current_time(timezone: str = "UTC") -> dict[str, str]:
    """The current date and time in an IANA time zone."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # zoneinfo itself refuses absolute and `..` keys; the message names only the model's own input.
        raise ToolError(f"unknown time zone {timezone!r}; use an IANA name such as Europe/Paris") from exc
    now = datetime.now(UTC).astimezone(zone).replace(microsecond=0)
    return {
        "timezone": timezone,
        "datetime": now.isoformat(),
        "weekday": now.strftime("%A"),
        "utc_offset": now.strftime("%z"),
    }


CURRENT_TIME = Tool(
    name="current_time",
    description="Get the current date and time, optionally in a given IANA time zone (default UTC).",
    parameters={
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": "IANA time zone name, e.g. 'Europe/Paris' or 'America/New_York'.",
                "pattern": r"^[A-Za-z0-9_+\-/]{1,64}$",
            }
        },
        "additionalProperties": False,
    },
    handler=current_time,
)


# -- calculate ---------------------------------------------------------------------------------------


def _check(value: object) -> Number:
    """Every intermediate value passes here: real, finite, and of bounded size."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is too large or not a number")
    return value


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        # Refuse before computing: the result has about bit_length(base) * exponent bits.
        if abs(base) > 1 and (base.bit_length() - 1) * exponent > MAX_INT_BITS:
            raise ToolError("the result is too large")
        return base**exponent
    if isinstance(exponent, int) and abs(exponent) > 10**6:
        # float ** huge int: Python converts the exponent to float; keep the work trivial either way.
        return _check(float(base) ** float(exponent))
    return base**exponent


def _multiply(left: Number, right: Number) -> Number:
    both_int = isinstance(left, int) and isinstance(right, int)
    if both_int and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
        raise ToolError("the result is too large")
    return left * right


_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: _multiply,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: _power,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: lambda a: +a,
    ast.USub: lambda a: -a,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _round(value: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(value)
    if not isinstance(ndigits, int) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise ToolError(
            f"round() digits must be a whole number between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}"
        )
    return round(value, ndigits)


def _log(value: Number, base: Number | None = None) -> float:
    return math.log(value) if base is None else math.log(value, base)


# name -> (function, min args, max args)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "exp": (math.exp, 1, 1),
    "log": (_log, 1, 2),
    "log2": (math.log2, 1, 1),
    "log10": (math.log10, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "min": (min, 1, MAX_FUNCTION_ARGS),
    "max": (max, 1, MAX_FUNCTION_ARGS),
}


def _evaluate_node(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _evaluate_node(node.body)
    if isinstance(node, ast.Constant):
        return _check(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate_node(node.left), _evaluate_node(node.right)
        return _check(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_evaluate_node(node.operand)))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.Call):
        return _call(node)
    raise ToolError(f"unsupported syntax: {type(node).__name__}")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        raise ToolError(f"unknown function; allowed: {', '.join(sorted(_FUNCTIONS))}")
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise ToolError("functions take plain positional arguments only")
    function, least, most = _FUNCTIONS[node.func.id]
    if not least <= len(node.args) <= most:
        raise ToolError(f"{node.func.id}() takes {least} to {most} arguments")
    return _check(function(*(_evaluate_node(arg) for arg in node.args)))


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression safely. Raises ToolError with a message fit for the model."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        with warnings.catch_warnings():
            # Odd model input ("1if", "1e") makes the parser warn; that is not worth a log line.
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ToolError("the expression is not valid arithmetic") from exc
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ToolError("the expression is too complex")
    try:
        return _evaluate_node(tree)
    except ZeroDivisionError as exc:
        raise ToolError("division by zero") from exc
    except OverflowError as exc:
        raise ToolError("the result is too large") from exc
    except (ValueError, TypeError) as exc:
        # math domain errors (sqrt(-1), log(0)) and bad operand mixes: say so without internals.
        raise ToolError("math domain error: an argument is outside the function's domain") from exc


async def calculate(expression: str) -> str:
    """The tool handler: the value as text (integers exact, floats in shortest round-trip form)."""
    return repr(evaluate(expression))


CALCULATE = Tool(
    name="calculate",
    description=(
        "Evaluate an arithmetic expression exactly. Supports numbers, + - * / // % ** and parentheses, "
        "the constants pi, e, tau and the functions " + ", ".join(sorted(_FUNCTIONS)) + "."
    ),
    parameters={
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "The expression, e.g. '(17 * 3) / 4 + sqrt(2)'.",
                "minLength": 1,
                "maxLength": MAX_EXPRESSION_CHARS,
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    },
    handler=calculate,
)


def builtin_tools() -> list[Tool]:
    """The built-in tools, in the order they are offered."""
    return [CURRENT_TIME, CALCULATE]
