"""ToolRegistry and the built-in tools: schemas, allow-lists, validation, timeouts, safe errors, plugins."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from fractions import Fraction
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aria_engine.config import EngineConfig
from aria_engine.exceptions import ToolError
from aria_engine.tool_registry import Tool, ToolRegistry, ToolResult
from aria_engine.tools.builtins import MAX_EXPRESSION_CHARS, evaluate

OBJECT_SCHEMA = {"type": "object", "properties": {}, "additionalProperties": False}


def make_registry(**settings_: object) -> ToolRegistry:
    return ToolRegistry(EngineConfig(**settings_), load_entry_points=False)


def tool(name: str, handler: object, *, timeout: float | None = None, parameters: dict | None = None) -> Tool:
    return Tool(name, f"{name} tool", parameters or OBJECT_SCHEMA, handler, timeout)  # type: ignore[arg-type]


async def calc(registry: ToolRegistry, expression: str) -> ToolResult:
    return await registry.execute("calculate", json.dumps({"expression": expression}), agent_id="main")


# -- schemas and allow-lists -------------------------------------------------------------------------


def test_builtins_are_offered_in_openai_function_format() -> None:
    schemas = make_registry().schemas("main")
    assert [s["function"]["name"] for s in schemas] == ["current_time", "calculate"]
    for schema in schemas:
        assert schema["type"] == "function"
        assert set(schema["function"]) == {"name", "description", "parameters"}
        assert schema["function"]["parameters"]["type"] == "object"


def test_schemas_never_exceed_max_tools_per_request() -> None:
    for limit, expected in ((128, 128), (5, 5), (0, 0)):
        registry = make_registry(max_tools_per_request=limit)
        for i in range(200):
            registry.register(tool(f"t{i}", lambda: "x"))
        assert len(registry.schemas("main")) == expected


def test_allow_list_limits_schemas_and_execution() -> None:
    registry = make_registry(agent_tools={"main": ["calculate"], "*": ["current_time"]})
    assert [s["function"]["name"] for s in registry.schemas("main")] == ["calculate"]
    assert [s["function"]["name"] for s in registry.schemas("other")] == ["current_time"]
    assert registry.is_allowed("main", "calculate")
    assert not registry.is_allowed("main", "current_time")
    assert not registry.is_allowed("main", "no_such_tool")


async def test_forbidden_tool_is_refused_like_an_unknown_one() -> None:
    registry = make_registry(agent_tools={"main": ["calculate"]})
    forbidden = await registry.execute("current_time", "{}", agent_id="main")
    unknown = await registry.execute("no_such_tool", "{}", agent_id="main")
    assert not forbidden.success and not unknown.success
    assert forbidden.content.replace("current_time", "X") == unknown.content.replace("no_such_tool", "X")
    allowed_elsewhere = await registry.execute("current_time", "{}", agent_id="someone")
    assert allowed_elsewhere.success  # no "*" entry: agents not listed get every tool


def test_agent_tools_is_read_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARIA_AGENT_TOOLS", '{"main": ["calculate"]}')
    registry = ToolRegistry(EngineConfig(), load_entry_points=False)
    assert [s["function"]["name"] for s in registry.schemas("main")] == ["calculate"]


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("bad name", OBJECT_SCHEMA),
        ("x" * 65, OBJECT_SCHEMA),
        ("", OBJECT_SCHEMA),
        ("ok", {"type": "not-a-type"}),
        ("calculate", OBJECT_SCHEMA),  # duplicate of a built-in
    ],
)
def test_register_refuses_bad_tools(name: str, parameters: dict) -> None:
    with pytest.raises(ValueError):
        make_registry().register(tool(name, lambda: "x", parameters=parameters))


# -- arguments ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
        ("{}", "'expression' is a required property"),
        ('{"expression": 42}', "expression: 42 is not of type 'string'"),
        ('{"expression": "1", "extra": true}', "Additional properties are not allowed"),
        ('{"expression": ""}', "expression"),
        ('{"expression": "' + "1" * (MAX_EXPRESSION_CHARS + 1) + '"}', "expression"),
        ("{" + " " * 70_000 + "}", "too large"),
    ],
)
async def test_bad_arguments_become_an_error_result(arguments: str, fragment: str) -> None:
    result = await make_registry().execute("calculate", arguments, agent_id="main")
    assert result.success is False
    assert result.content.startswith("Error:")
    assert fragment in result.content
    assert len(result.content) < 400


async def test_empty_arguments_mean_no_arguments() -> None:
    for arguments in ("", "  ", "{}"):
        result = await make_registry().execute("current_time", arguments, agent_id="main")
        assert result.success, result.content
        assert json.loads(result.content)["timezone"] == "UTC"


# -- running handlers ---------------------------------------------------------------------------------


async def test_sync_and_async_handlers_get_their_arguments() -> None:
    registry = make_registry()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    async def double(n: int) -> dict:
        return {"double": n * 2}

    registry.register(tool("double", double, parameters=schema))
    registry.register(tool("triple", lambda n: [n * 3], parameters=schema))
    assert await registry.execute("double", '{"n": 4}', agent_id="main") == ToolResult('{"double":8}', True)
    assert await registry.execute("triple", '{"n": 4}', agent_id="main") == ToolResult("[12]", True)


async def test_async_handler_is_really_cancelled_on_timeout() -> None:
    registry = make_registry(tool_timeout=30)
    outcome: list[str] = []

    async def stalls() -> str:
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("finished")
        return "never"

    registry.register(tool("stalls", stalls, timeout=0.05))
    result = await registry.execute("stalls", "{}", agent_id="main")
    assert result == ToolResult("Error: the tool stalls timed out after 0.05 seconds.", False)
    assert outcome == ["cancelled"]


async def test_handler_that_swallows_the_cancellation_still_times_out() -> None:
    registry = make_registry()

    async def stubborn() -> str:
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            return "I refuse to stop"
        return "never"

    registry.register(tool("stubborn", stubborn, timeout=0.05))
    result = await registry.execute("stubborn", "{}", agent_id="main")
    assert result == ToolResult("Error: the tool stubborn timed out after 0.05 seconds.", False)


async def test_plain_function_returning_a_coroutine_is_awaited() -> None:
    registry = make_registry()

    async def answer() -> str:
        return "42"

    registry.register(tool("indirect", lambda: answer()))
    assert await registry.execute("indirect", "{}", agent_id="main") == ToolResult("42", True)


async def test_caller_cancellation_propagates_out_of_execute() -> None:
    registry = make_registry(tool_timeout=60)
    started = anyio.Event()

    async def slow() -> str:
        started.set()
        await anyio.sleep(3600)
        return "never"

    registry.register(tool("slow", slow))
    outcome: list[ToolResult] = []
    async with anyio.create_task_group() as group:

        async def run() -> None:
            outcome.append(await registry.execute("slow", "{}", agent_id="main"))

        group.start_soon(run)
        await started.wait()
        group.cancel_scope.cancel()  # the turn was cancelled: no result is made up for it
    assert outcome == []


async def test_config_tool_timeout_caps_a_tool_timeout() -> None:
    registry = make_registry(tool_timeout=0.05)

    async def stalls() -> str:
        await anyio.sleep(3600)
        return "never"

    registry.register(tool("stalls", stalls, timeout=3600))
    result = await registry.execute("stalls", "{}", agent_id="main")
    assert not result.success and "timed out after 0.05 seconds" in result.content


async def test_sync_handler_timeout_returns_without_waiting_for_the_thread() -> None:
    registry = make_registry(tool_timeout=0.05)
    release = threading.Event()

    def blocks() -> str:
        release.wait(60)
        return "late"

    registry.register(tool("blocks", blocks))
    try:
        result = await registry.execute("blocks", "{}", agent_id="main")
    finally:
        release.set()  # let the abandoned worker thread end
    assert not result.success and "timed out" in result.content


async def test_handler_exception_text_never_reaches_the_model() -> None:
    registry = make_registry()

    def leaks() -> str:
        raise RuntimeError("password=hunter2 at /srv/secret/path.py line 7")

    registry.register(tool("leaks", leaks))
    result = await registry.execute("leaks", "{}", agent_id="main")
    assert result == ToolResult("Error: the tool leaks failed.", False)


async def test_tool_error_message_is_passed_to_the_model() -> None:
    registry = make_registry()

    async def refuses() -> str:
        raise ToolError("the city was not found")

    registry.register(tool("refuses", refuses))
    assert await registry.execute("refuses", "{}", agent_id="main") == ToolResult(
        "Error: the city was not found", False
    )


async def test_result_is_capped_with_a_marker() -> None:
    registry = make_registry(tool_result_max_chars=1000)
    registry.register(tool("big", lambda: "a" * 50_000))
    registry.register(tool("exact", lambda: "b" * 1000))
    big = await registry.execute("big", "{}", agent_id="main")
    assert big.success
    assert len(big.content) <= 1000
    assert big.content.startswith("a" * 900)
    assert big.content.endswith("of 50000 characters]")
    assert (await registry.execute("exact", "{}", agent_id="main")).content == "b" * 1000


async def test_unusable_return_value_is_an_error_result() -> None:
    registry = make_registry()
    registry.register(tool("odd", lambda: object()))
    registry.register(tool("unserializable", lambda: {"x": object()}))
    for name in ("odd", "unserializable"):
        result = await registry.execute(name, "{}", agent_id="main")
        assert result == ToolResult(f"Error: the tool {name} returned an unusable result.", False)


# -- entry points -------------------------------------------------------------------------------------


def write_plugin(root: Path, package: str, entry_points: str, module_source: str) -> None:
    """A real installed distribution: a module plus a .dist-info with entry_points.txt."""
    (root / f"{package}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{package}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


async def test_entry_point_tools_are_registered_and_broken_ones_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = f"aria_test_plugin_{tmp_path.name.replace('-', '_')}"
    write_plugin(
        tmp_path,
        package,
        f"""
        [aria_engine.tools]
        echo = {package}:ECHO
        pair = {package}:make_pair
        broken = {package}:missing_name
        wrong = {package}:NOT_A_TOOL
        """,
        """
        from aria_engine.tool_registry import Tool

        async def _echo(text: str) -> str:
            return text

        SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        ECHO = Tool("echo", "Echo the text.", SCHEMA, _echo)
        NOT_A_TOOL = 42

        def make_pair():
            return [Tool("one", "One.", {"type": "object"}, lambda: "1"),
                    Tool("two", "Two.", {"type": "object"}, lambda: "2")]
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = ToolRegistry(EngineConfig())
        assert {"echo", "one", "two"} <= set(registry.names)
        assert sorted(registry.load_errors) == ["broken", "wrong"]
        assert await registry.execute("echo", '{"text": "hi"}', agent_id="main") == ToolResult("hi", True)
        assert await registry.execute("two", "", agent_id="main") == ToolResult("2", True)
        assert "echo" not in make_registry().names  # load_entry_points=False
    finally:
        sys.modules.pop(package, None)


# -- the built-ins ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2+2*3", "8"),
        ("(2+2)*3", "12"),
        ("7 // 2", "3"),
        ("7 % 4", "3"),
        ("-7 / 2", "-3.5"),
        ("2 ** 10", "1024"),
        ("2 ** -1", "0.5"),
        ("-(3 - 5)", "2"),
        ("sqrt(16)", "4.0"),
        ("round(2.567, 2)", "2.57"),
        ("max(1, 5, 3) + min(4, 2)", "7"),
        ("floor(pi * 100)", "314"),
        ("log(8, 2)", "3.0"),
        ("1e3 + 0.5", "1000.5"),
        ("2 ** 4000 // 2 ** 3999", "2"),
    ],
)
async def test_calculate_evaluates_arithmetic(expression: str, expected: str) -> None:
    assert await calc(make_registry(), expression) == ToolResult(expected, True)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("9**9**9", "too large"),
        ("10**10**10", "too large"),
        ("2**5000", "too large"),
        ("(2**4000) * (2**4000)", "too large"),
        ("1e308 * 10", "too large"),
        ("exp(1000)", "too large"),
        ("10**400 / 3", "too large"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("sqrt(-1)", "domain"),
        ("(-8) ** 0.5", "not a real number"),
        ("__import__('os').system('true')", "unknown function"),
        ("open('/etc/passwd')", "unknown function"),
        ("(1).__class__", "unsupported syntax"),
        ("x + 1", "unsupported syntax"),
        ("'a' * 3", "not a real number"),
        ("True + 1", "not a real number"),
        ("1j * 2", "not a real number"),
        ("[1, 2]", "unsupported syntax"),
        ("lambda: 1", "unsupported syntax"),
        ("1 if 1 else 2", "unsupported syntax"),
        ("1 << 100000", "unsupported syntax"),
        ("2 < 3", "unsupported syntax"),
        ("round(5, 10**6)", "round() digits"),
        ("max(*[1, 2])", "positional"),
        ("sqrt(x=4)", "positional"),
        ("sqrt(1, 2)", "takes 1 to 1"),
        ("1 +", "not valid arithmetic"),
        ("(" * 240 + "1" + ")" * 240, "not valid arithmetic"),
        ("+".join(["1"] * 150), "too complex"),
    ],
)
async def test_calculate_refuses_unsafe_or_huge_work(expression: str, fragment: str) -> None:
    result = await calc(make_registry(), expression)
    assert result.success is False, result.content
    assert fragment in result.content


def _expected(tree: object) -> Fraction:
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree  # type: ignore[misc]
    a, b = _expected(left), _expected(right)
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _render(tree: object) -> str:
    if isinstance(tree, int):
        return f"({tree})" if tree < 0 else str(tree)
    op, left, right = tree  # type: ignore[misc]
    return f"({_render(left)} {op} {_render(right)})"


integer_trees = st.recursive(
    st.integers(-(10**6), 10**6),
    lambda children: st.tuples(st.sampled_from("+-*"), children, children),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(integer_trees)
def test_calculate_matches_exact_integer_arithmetic(tree: object) -> None:
    assert evaluate(_render(tree)) == _expected(tree)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-*/%().e ,sqrtlogpixmaround", max_size=60))
def test_calculate_on_any_input_returns_a_number_or_a_tool_error(expression: str) -> None:
    try:
        value = evaluate(expression)
    except ToolError:
        return
    assert isinstance(value, int | float) and not isinstance(value, bool)


async def test_current_time_in_a_time_zone() -> None:
    result = await make_registry().execute("current_time", '{"timezone": "Asia/Tokyo"}', agent_id="main")
    data = json.loads(result.content)
    assert result.success
    assert data["timezone"] == "Asia/Tokyo" and data["utc_offset"] == "+0900"
    assert data["datetime"].endswith("+09:00")


@pytest.mark.parametrize("zone", ["Not/AZone", "Europe", "../../etc/passwd", "/etc/localtime", "a" * 65])
async def test_current_time_refuses_unknown_or_path_like_zones(zone: str) -> None:
    result = await make_registry().execute("current_time", json.dumps({"timezone": zone}), agent_id="main")
    assert result.success is False
    assert "root:" not in result.content
