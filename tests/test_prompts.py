"""PromptAssembler: override, agent prompt files (no escapes, no symlinks), time and tool sections, cache."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from aria_engine.config import EngineConfig
from aria_engine.prompts import DEFAULT_INSTRUCTIONS, MAX_PROMPT_FILE_BYTES, PromptAssembler, is_safe_agent_id

NOW = datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC)
TOOLS = [
    {"type": "function", "function": {"name": "calculate", "description": "", "parameters": {}}},
    {"type": "function", "function": {"name": "current_time", "description": "", "parameters": {}}},
]


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prompts"
    directory.mkdir()
    (directory / "main.md").write_text("You are the main agent.\n")
    (tmp_path / "secret.md").write_text("TOP SECRET outside the prompts dir")
    return directory


def assembler(prompts_dir: Path | None) -> PromptAssembler:
    return PromptAssembler(EngineConfig(prompts_dir=prompts_dir))


def build(a: PromptAssembler, agent_id: str = "main", **kwargs: object) -> str:
    kwargs.setdefault("override", None)
    kwargs.setdefault("tool_schemas", TOOLS)
    kwargs.setdefault("now", NOW)
    return a.build(agent_id=agent_id, **kwargs)  # type: ignore[arg-type]


def test_override_is_used_exactly(prompts_dir: Path) -> None:
    override = "  Be a pirate.\n\nNo tools.  "
    assert build(assembler(prompts_dir), override=override) == override


def test_blank_override_counts_as_none(prompts_dir: Path) -> None:
    assert build(assembler(prompts_dir), override="  \n") == build(assembler(prompts_dir))


def test_sections_in_order_instructions_tools_time(prompts_dir: Path) -> None:
    assert build(assembler(prompts_dir)) == (
        "You are the main agent.\n\n"
        "Available tools: calculate, current_time.\n\n"
        "Current date and time: 2026-03-04 05:06 UTC (Wednesday)."
    )


def test_no_tools_section_without_tools(prompts_dir: Path) -> None:
    prompt = build(assembler(prompts_dir), tool_schemas=[])
    assert "Available tools" not in prompt
    assert prompt.startswith("You are the main agent.\n\nCurrent date and time:")


def test_time_is_utc_at_minute_resolution() -> None:
    a = assembler(None)
    paris = timezone(timedelta(hours=1))
    local = datetime(2026, 3, 4, 6, 6, 59, tzinfo=paris)
    naive = datetime(2026, 3, 4, 5, 6)
    assert build(a, now=local) == build(a, now=NOW) == build(a, now=naive)
    assert build(a, now=NOW + timedelta(minutes=1)) != build(a, now=NOW)


def test_time_section_is_rebuilt_each_call_without_now() -> None:
    prompt = assembler(None).build(agent_id="main", override=None, tool_schemas=[])
    assert datetime.now(UTC).strftime("%Y-%m-%d") in prompt


def test_default_instructions_without_a_prompts_dir_or_file(prompts_dir: Path) -> None:
    assert build(assembler(None)).startswith(DEFAULT_INSTRUCTIONS + "\n\n")
    assert build(assembler(prompts_dir), "research").startswith(DEFAULT_INSTRUCTIONS + "\n\n")
    (prompts_dir / "empty.md").write_text("  \n")
    assert build(assembler(prompts_dir), "empty").startswith(DEFAULT_INSTRUCTIONS + "\n\n")


@pytest.mark.parametrize(
    "agent_id",
    [
        "../secret",
        "..",
        "a/b",
        "a\\b",
        ".hidden",
        "",
        "-x",
        "_x",
        "x" * 65,
        "main.md",
        "mäin",
        "a b",
        "a\x00",
        "main\n",
        "main/",
    ],
)
def test_unsafe_agent_ids_never_touch_the_file_system(prompts_dir: Path, agent_id: str) -> None:
    assert not is_safe_agent_id(agent_id)
    prompt = build(assembler(prompts_dir), agent_id)
    assert prompt.startswith(DEFAULT_INSTRUCTIONS)
    assert "SECRET" not in prompt


@pytest.mark.parametrize("agent_id", ["main", "Main", "a", "0", "research-bot_2", "x" * 64])
def test_safe_agent_ids(agent_id: str) -> None:
    assert is_safe_agent_id(agent_id)


def test_symlinked_prompt_file_is_refused(prompts_dir: Path) -> None:
    (prompts_dir / "leak.md").symlink_to(prompts_dir.parent / "secret.md")
    (prompts_dir / "alias.md").symlink_to(prompts_dir / "main.md")  # even one inside the directory
    a = assembler(prompts_dir)
    for agent in ("leak", "alias"):
        prompt = build(a, agent)
        assert prompt.startswith(DEFAULT_INSTRUCTIONS)
        assert "SECRET" not in prompt and "main agent" not in prompt


def test_a_symlinked_prompts_dir_itself_is_allowed(prompts_dir: Path, tmp_path: Path) -> None:
    # The operator's own configuration may point through a symlink; only agent files are checked.
    link = tmp_path / "linked"
    link.symlink_to(prompts_dir, target_is_directory=True)
    assert build(assembler(link)).startswith("You are the main agent.")


def test_directories_fifos_and_oversized_files_are_refused(prompts_dir: Path) -> None:
    (prompts_dir / "folder.md").mkdir()
    os.mkfifo(prompts_dir / "pipe.md")  # opening it for reading must not wait for a writer
    (prompts_dir / "huge.md").write_text("x" * (MAX_PROMPT_FILE_BYTES + 1))
    a = assembler(prompts_dir)
    assert build(a, "folder").startswith(DEFAULT_INSTRUCTIONS)
    assert build(a, "huge").startswith(DEFAULT_INSTRUCTIONS)
    assert build(a, "pipe").startswith(DEFAULT_INSTRUCTIONS)


def test_edited_prompt_file_takes_effect_on_the_next_build(prompts_dir: Path) -> None:
    a = assembler(prompts_dir)
    assert build(a).startswith("You are the main agent.")
    path = prompts_dir / "main.md"
    path.write_text("You are the edited agent, with a longer text.")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert build(a).startswith("You are the edited agent")


def test_same_sections_hit_the_cache(prompts_dir: Path) -> None:
    a = assembler(prompts_dir)
    first = build(a)
    assert build(a) is first
    assert build(a, now=NOW + timedelta(seconds=30)) is first  # same minute
    assert build(a, tool_schemas=TOOLS[:1]) is not first


def test_prompt_cache_is_bounded() -> None:
    a = assembler(None)
    for minute in range(1000):
        build(a, now=NOW + timedelta(minutes=minute))
    assert len(a._prompts) <= 256
