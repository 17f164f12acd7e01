"""Input types for request bodies and query parameters.

`Text` is a string without NUL characters, and `JsonObject` a JSON object without NUL characters in any
key or string value: PostgreSQL cannot store NUL in text or JSON, so such input is a 422 at the edge, the
same on both backends, instead of a database error.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator

__all__ = ["JsonObject", "Text", "check_no_nul"]

_MAX_DEPTH = 64


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def check_no_nul(value: Any, depth: int = 0) -> Any:
    """Raise ValueError if a NUL character appears anywhere in a JSON value."""
    if depth > _MAX_DEPTH:
        raise ValueError("is nested too deeply")
    if isinstance(value, str):
        _no_nul(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(str(key))
            check_no_nul(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_no_nul(item, depth + 1)
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
JsonObject = Annotated[dict[str, Any], AfterValidator(check_no_nul)]
