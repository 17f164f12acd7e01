"""`aria-engine export` and `aria-engine import`, run with click's CliRunner on a real database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from click.testing import CliRunner

from aria_engine.cli import cli
from aria_engine.db.engine import create_engine, create_session_factory
from tests.test_export import Factory, Msg, make_session, tool_conversation
from tests.test_import import assert_totals_match, load

FIXTURE = Path(__file__).parent / "fixtures" / "openclaw_branches.jsonl"
T = TypeVar("T")


def with_db(database_url: str, work: Callable[[Factory], Awaitable[T]]) -> T:
    """Run `work` against the database in an event loop of its own (the CLI runs its own loop too)."""

    async def main() -> T:
        engine = create_engine(database_url)
        try:
            return await work(create_session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


@pytest.fixture
def runner(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)  # no developer .env is read
    return CliRunner(env={"DATABASE_URL": database_url, "ARIA_DATA_DIR": str(tmp_path / "data")})


def test_export_writes_the_chosen_format_to_a_file(
    runner: CliRunner, database_url: str, tmp_path: Path
) -> None:
    sid = with_db(database_url, lambda f: make_session(f, tool_conversation()))
    target = tmp_path / "out.jsonl"

    result = runner.invoke(cli, ["export", str(sid), "--format", "openclaw", "--output", str(target)])

    assert result.exit_code == 0, result.output
    header = orjson.loads(target.read_bytes().splitlines()[0])
    assert (header["type"], header["version"], header["id"]) == ("session", 3, str(sid))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_to_stdout_and_errors_are_one_clean_line(runner: CliRunner, database_url: str) -> None:
    sid = with_db(database_url, lambda f: make_session(f, [Msg("user", "hello <b>")]))

    shown = runner.invoke(cli, ["export", str(sid), "-f", "md"])
    missing = runner.invoke(cli, ["export", str(uuid.uuid4())])
    hostile = runner.invoke(cli, ["export", "../../etc/passwd"])

    assert shown.exit_code == 0 and "hello &lt;b&gt;" in shown.output
    for result in (missing, hostile):
        assert result.exit_code == 1
        assert result.output == "Error: Session not found.\n"


def test_import_detects_openclaw_and_reports_skipped_lines_as_json(
    runner: CliRunner, database_url: str
) -> None:
    result = runner.invoke(cli, ["import", str(FIXTURE), "--owner", "dana", "--json"])

    assert result.exit_code == 0, result.output
    report: dict[str, Any] = orjson.loads(result.output)
    assert (report["imported"], report["skipped"], report["off_branch"]) == (8, 2, 2)
    assert report["problems"][0] == {"line": 8, "reason": "not valid JSON"}
    session, rows = with_db(database_url, lambda f: load(f, report["session_id"]))
    assert session.owner == "dana" and len(rows) == 8
    assert_totals_match(session, rows)


def test_export_then_import_round_trips_through_files(
    runner: CliRunner, database_url: str, tmp_path: Path
) -> None:
    sid = with_db(database_url, lambda f: make_session(f, tool_conversation()))
    path = tmp_path / "s.jsonl"
    assert runner.invoke(cli, ["export", str(sid), "-o", str(path)]).exit_code == 0

    result = runner.invoke(cli, ["import", str(path), "--format", "jsonl", "--agent-id", "copy"])

    assert result.exit_code == 0, result.output
    assert result.output.startswith("imported 7 messages into session ")
    new_id = result.output.split()[5]
    session, rows = with_db(database_url, lambda f: load(f, new_id))
    assert (session.owner, session.agent_id, len(rows)) == ("local", "copy", 7)


def test_import_refuses_an_unsafe_agent_id(runner: CliRunner, database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"role": "user", "content": "hi"}\n')
    result = runner.invoke(cli, ["import", str(path), "--agent-id", "../x"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: agent_id must be")
