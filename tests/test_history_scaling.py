"""The send path's database work does not grow with the session's history."""

from __future__ import annotations

import uuid

from sqlalchemy import event, insert, update

from aria_engine.db.models import ChatMessage, ChatSession


async def _seed_history(engine, session_id: str, count: int) -> None:  # type: ignore[no-untyped-def]
    sid = uuid.UUID(session_id)
    rows = [
        {
            "id": uuid.uuid4(),
            "session_id": sid,
            "seq": seq,
            "role": "user" if seq % 2 else "assistant",
            "content": f"message number {seq}",
            "created_at": ChatSession.created_at.default.arg(None),
        }
        for seq in range(1, count + 1)
    ]
    async with engine.db_factory.begin() as db:
        for start in range(0, count, 2000):
            await db.execute(insert(ChatMessage), rows[start : start + 2000])
        await db.execute(
            update(ChatSession).where(ChatSession.id == sid).values(message_count=count, next_seq=count + 1)
        )


async def _statements_for_one_turn(engine, session_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    statements: list[str] = []
    sync_engine = engine.db_factory.kw["bind"].sync_engine

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement.split()[0].upper())

    event.listen(sync_engine, "before_cursor_execute", record)
    try:
        response = await engine.send_message(session_id, "and now?", owner="o")
    finally:
        event.remove(sync_engine, "before_cursor_execute", record)
    assert response.finish_reason == "stop"
    return statements


async def test_a_session_with_10000_messages_sends_with_the_same_statements_as_one_with_10(
    make_engine, fake_llm
) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    small = await engine.create_session(owner="o", context_window=20)
    large = await engine.create_session(owner="o", context_window=20)
    await _seed_history(engine, small["id"], 10)
    await _seed_history(engine, large["id"], 10_000)

    small_statements = await _statements_for_one_turn(engine, small["id"])
    large_statements = await _statements_for_one_turn(engine, large["id"])

    assert small_statements == large_statements, (small_statements, large_statements)
    assert len(small_statements) <= 12, small_statements
    # The context sent to the provider is bounded by the session's context_window.
    assert len(fake_llm.requests[-1]["messages"]) <= 1 + 20 + 1


async def test_a_sessions_first_turn_reads_no_history_and_its_second_reads_it_from_the_cache(
    make_engine, fake_llm
) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")

    first = await _statements_for_one_turn(engine, session["id"])
    second = await _statements_for_one_turn(engine, session["id"])

    # Seqs start at 1 with no gaps, so the first message has nothing before it to read.
    assert "SELECT" not in first, first
    assert "SELECT" not in second, second
    sent = fake_llm.requests[-1]["messages"]
    assert [m["role"] for m in sent if m["role"] != "system"] == ["user", "assistant", "user"]
    assert sent[-1]["content"] == sent[-3]["content"] == "and now?"


async def test_a_turn_costs_four_round_trips_on_postgresql(
    make_engine, database_url: str
) -> None:  # type: ignore[no-untyped-def]
    postgres = database_url.startswith("postgresql")
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    sent: list[str] = []

    def log_statement(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        sent.append(statement.split()[0].upper())

    def log_transaction(name: str):  # type: ignore[no-untyped-def]
        # A BEGIN or COMMIT on the wire: an AUTOCOMMIT connection sends none.
        def log(conn) -> None:  # type: ignore[no-untyped-def]
            if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                sent.append(name)

        return log

    bind = engine.db_factory.kw["bind"]
    if postgres:
        event.listen(bind.sync_engine, "begin", log_transaction("BEGIN"))
        event.listen(bind.sync_engine, "commit", log_transaction("COMMIT"))
    event.listen(bind.sync_engine, "before_cursor_execute", log_statement)
    first = await engine.send_message(session["id"], "Hello there", owner="o")
    first_sent, sent[:] = sent[:], []
    second = await engine.send_message(session["id"], "and now?", owner="o")
    second_sent = sent[:]

    assert first.finish_reason == second.finish_reason == "stop"
    assert (await engine.get_session(session["id"], owner="o"))["title"] == "Hello there"
    if postgres:
        # The lease, the title (a first turn) and the user row in one statement (`WITH started AS
        # (UPDATE ...), inserted AS (INSERT ...) SELECT ...`) in the start's transaction; the final row
        # with its counters and the lease's release in one statement of its own (`WITH advanced AS
        # (UPDATE ...) INSERT ...`), with no BEGIN or COMMIT.
        assert first_sent == ["BEGIN", "WITH", "COMMIT", "WITH"], first_sent
        assert second_sent == ["BEGIN", "WITH", "COMMIT", "WITH"], second_sent
    else:
        # No data-modifying WITH on SQLite: the title and the final row's counters are UPDATEs of their own.
        assert first_sent == ["UPDATE", "INSERT", "UPDATE", "UPDATE", "INSERT"], first_sent
        assert second_sent == ["UPDATE", "INSERT", "UPDATE", "INSERT"], second_sent
