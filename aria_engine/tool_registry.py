"""ToolRegistry: the tools a model may call, their schemas, and the one safe way to run them.

The registry owns three guarantees (SPEC section 8):
- a model only ever sees, and only ever runs, the tools its agent is allowed (`config.agent_tools`), and
  never more than `config.max_tools_per_request` of them;
- arguments are validated against the tool's JSON Schema before the handler runs;
- `execute` never raises for a tool's sake: unknown or forbidden tools, bad JSON, schema violations,
  timeouts and handler exceptions all become `ToolResult(success=False)` with a safe message. Exception
  text from a handler never reaches the model (only `ToolError.message`, which is written to be shown);
  the traceback goes to the server log.

Timeouts: async handlers run inside a cancel scope, so a timeout really stops them. Sync handlers run in a
worker thread (they must not block the event loop); Python cannot stop a thread, so on a timeout the
thread is abandoned and its result discarded. A small capacity limiter bounds how many such threads can
exist at once. Built-in tools are async and bounded, so none of this applies to them; plugin authors are
told to write async handlers (docs/TOOLS.md).

Usage:
    registry = ToolRegistry(config)                       # built-ins + entry-point tools
    tools = registry.schemas("main")                      # OpenAI `tools=` list
    result = await registry.execute("calculate", '{"expression": "2+2"}', agent_id="main")
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from aria_engine.exceptions import ToolError

if TYPE_CHECKING:
    from aria_engine.config import EngineConfig

__all__ = ["ENTRY_POINT_GROUP", "Tool", "ToolRegistry", "ToolResult"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "aria_engine.tools"
# OpenAI's rule for function names; other OpenAI-compatible servers accept the same set.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Model-written argument text larger than this is refused before parsing (it is never legitimate).
MAX_ARGUMENTS_CHARS = 64 * 1024
# At most this many abandoned-or-running sync handler threads at once (see module docstring).
_SYNC_TOOL_THREADS = 4
_ERROR_DETAIL_CHARS = 300


@dataclass(slots=True, frozen=True)
class Tool:
    """A callable tool.

    - name: unique, `[A-Za-z0-9_-]{1,64}`.
    - description: what the model reads to decide when to call it.
    - parameters: a JSON Schema (draft 2020-12) for the keyword arguments, usually `{"type": "object", ...}`.
    - handler: `async def handler(**kwargs) -> str | dict | list` (preferred) or a sync function.
      Raise `ToolError("safe message")` to tell the model what went wrong.
    - timeout: seconds for one call; the operator's `config.tool_timeout` is the ceiling.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    handler: Callable[..., Any]
    timeout: float | None = None


@dataclass(slots=True, frozen=True)
class ToolResult:
    """What the model is given back: `content` is always safe to show it."""

    content: str
    success: bool


@dataclass(slots=True, frozen=True)
class _Entry:
    tool: Tool
    validator: Draft202012Validator
    schema: dict[str, Any]  # the OpenAI function-format dict, built once
    is_async: bool


class ToolRegistry:
    """Registered tools, filtered per agent, executed safely.

    Parameters:
    - config: `agent_tools`, `max_tools_per_request`, `tool_timeout`, `tool_result_max_chars` are read.
    - load_entry_points: also register tools from the `aria_engine.tools` entry-point group (once, here).
    """

    def __init__(self, config: EngineConfig, *, load_entry_points: bool = True) -> None:
        from aria_engine.tools import builtin_tools

        self._config = config
        self._entries: dict[str, _Entry] = {}
        self._sync_limiter = anyio.CapacityLimiter(_SYNC_TOOL_THREADS)
        # Names of entry points that failed to load, for the start-up log and diagnostics.
        self.load_errors: list[str] = []
        for tool in builtin_tools():
            self.register(tool)
        if load_entry_points:
            self._load_entry_points()

    # -- registration ------------------------------------------------------------------------------

    def register(self, tool: Tool) -> None:
        """Add a tool. Raises ValueError for a bad name, a bad schema or a duplicate name."""
        if not isinstance(tool, Tool):
            raise ValueError(f"expected a Tool, got {type(tool).__name__}")
        if not _TOOL_NAME.match(tool.name):
            raise ValueError(f"invalid tool name {tool.name!r}: use 1-64 of [A-Za-z0-9_-]")
        if tool.name in self._entries:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        if not callable(tool.handler):
            raise ValueError(f"tool {tool.name!r}: handler is not callable")
        if tool.timeout is not None and tool.timeout <= 0:
            raise ValueError(f"tool {tool.name!r}: timeout must be positive")
        try:
            Draft202012Validator.check_schema(tool.parameters)
        except SchemaError as exc:
            raise ValueError(f"tool {tool.name!r}: invalid parameters schema: {exc.message}") from exc
        schema = {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            },
        }
        self._entries[tool.name] = _Entry(
            tool=tool,
            validator=Draft202012Validator(tool.parameters),
            schema=schema,
            is_async=_is_async_callable(tool.handler),
        )

    def _load_entry_points(self) -> None:
        # A broken plugin must not take the engine down: it is logged, skipped and listed in load_errors.
        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                for tool in _as_tools(point.load()):
                    self.register(tool)
            except Exception:
                logger.exception("could not load tools from entry point %r", point.name)
                self.load_errors.append(point.name)

    # -- what a model sees -------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Every registered tool name, in registration order."""
        return list(self._entries)

    def is_allowed(self, agent_id: str, name: str) -> bool:
        """True when `name` is registered and the agent's allow-list (if any) names it."""
        if name not in self._entries:
            return False
        allowed = self._allow_list(agent_id)
        return allowed is None or name in allowed

    def schemas(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's tools in OpenAI function format, at most `config.max_tools_per_request`."""
        limit = self._config.max_tools_per_request
        allowed = self._allow_list(agent_id)
        out: list[dict[str, Any]] = []
        for name, entry in self._entries.items():
            if len(out) >= limit:
                break
            if allowed is None or name in allowed:
                out.append(entry.schema)
        return out

    def _allow_list(self, agent_id: str) -> frozenset[str] | None:
        table = self._config.agent_tools
        if not table:
            return None
        names = table.get(agent_id, table.get("*"))
        return None if names is None else frozenset(names)

    # -- running a call ----------------------------------------------------------------------------

    async def execute(self, name: str, arguments: str, *, agent_id: str) -> ToolResult:
        """Run one tool call from the model. Never raises (cancellation of the caller aside)."""
        entry = self._entries.get(name)
        if entry is None or not self.is_allowed(agent_id, name):
            # The same answer for unknown and forbidden: an agent learns nothing about other tools.
            return _failure(f"Error: no tool named {_clip(name, 64)!r} is available.")
        kwargs = _parse_arguments(arguments)
        if isinstance(kwargs, ToolResult):
            return kwargs
        problem = _first_schema_error(entry.validator, kwargs)
        if problem is not None:
            return _failure(f"Error: invalid arguments for {name}: {problem}")
        return await self._run(entry, kwargs)

    async def _run(self, entry: _Entry, kwargs: dict[str, Any]) -> ToolResult:
        tool = entry.tool
        timeout = self._config.tool_timeout
        if tool.timeout is not None:
            timeout = min(timeout, tool.timeout)
        try:
            with anyio.move_on_after(timeout) as scope:
                if entry.is_async:
                    value = await tool.handler(**kwargs)
                else:
                    value = await anyio.to_thread.run_sync(
                        partial(tool.handler, **kwargs), abandon_on_cancel=True, limiter=self._sync_limiter
                    )
                if inspect.isawaitable(value):  # a plain function that returned a coroutine
                    value = await value
        except ToolError as exc:
            return _failure(f"Error: {exc.message}")
        except Exception:
            logger.exception("tool %r failed", tool.name)
            return _failure(f"Error: the tool {tool.name} failed.")
        if scope.cancel_called:  # past the deadline, even if the handler swallowed the cancellation
            logger.warning("tool %r timed out after %.1fs", tool.name, timeout)
            return _failure(f"Error: the tool {tool.name} timed out after {timeout:g} seconds.")
        text = _to_text(value)
        if text is None:
            logger.error("tool %r returned an unsupported %s", tool.name, type(value).__name__)
            return _failure(f"Error: the tool {tool.name} returned an unusable result.")
        return ToolResult(content=_cap(text, self._config.tool_result_max_chars), success=True)


# -- helpers (pure) --------------------------------------------------------------------------------


def _is_async_callable(handler: Callable[..., Any]) -> bool:
    # Also a callable object whose class defines `async def __call__`.
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)


def _as_tools(obj: object) -> list[Tool]:
    """An entry point may name a Tool, a list of Tools, or a function returning either."""
    if callable(obj) and not isinstance(obj, Tool):
        obj = obj()
    if isinstance(obj, Tool):
        return [obj]
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes | dict):
        tools = list(obj)
        if all(isinstance(tool, Tool) for tool in tools):
            return tools
    raise ValueError(f"entry point gave {type(obj).__name__}, expected Tool or list of Tool")


def _parse_arguments(arguments: str | None) -> dict[str, Any] | ToolResult:
    text = (arguments or "").strip()
    if not text:
        return {}  # models send "" for a call without arguments
    if len(text) > MAX_ARGUMENTS_CHARS:
        return _failure("Error: the arguments are too large.")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _failure("Error: the arguments are not valid JSON. Send a JSON object.")
    if not isinstance(value, dict):
        return _failure("Error: the arguments must be a JSON object.")
    return value


def _first_schema_error(validator: Draft202012Validator, value: dict[str, Any]) -> str | None:
    error = next(iter(validator.iter_errors(value)), None)
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path)
    detail = f"{where}: {error.message}" if where else error.message
    return _clip(detail, _ERROR_DETAIL_CHARS)


def _to_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, dict | list | int | float | bool):
        try:
            return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            return None
    return None


def _cap(text: str, max_chars: int) -> str:
    """Cut `text` to at most `max_chars` characters, the marker included."""
    if len(text) <= max_chars:
        return text
    marker = f"\n[truncated: showing {{kept}} of {len(text)} characters]"
    kept = max(0, max_chars - len(marker.format(kept=max_chars)))
    return text[:kept] + marker.format(kept=kept)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _failure(message: str) -> ToolResult:
    return ToolResult(content=message, success=False)
