"""Built-in tools shipped with the engine. More tools come from the `aria_engine.tools` entry points.

`builtin_tools()` returns fresh `Tool` values; `ToolRegistry` registers them first, so a plugin cannot
take over a built-in's name.
"""

from __future__ import annotations

from aria_engine.tools.builtins import builtin_tools

__all__ = ["builtin_tools"]
