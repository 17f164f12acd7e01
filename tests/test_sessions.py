"""Session lifecycle: create, list (filters, paging, search), history pages, update, end/reopen, delete."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aria_engine.exceptions import SessionBusy, SessionNotFound, ValidationError
from aria_engine.sessions import TITLE_CHARS, clean_title
from aria_engine.testing.fake_llm import Reply, Stall
from tests.plugins.engine import wait_for


async def test_list_is_per_owner_newest_first_with_filters_and_pages(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    made = [await engine.create_session(owner="alice", agent_id="a" if i % 2 else "b") for i in range(5)]
    await engine.create_session(owner="bob")

    items, total = await engine.list_sessions(owner="alice", page=1, page_size=2)
    assert total == 5 and [s["id"] for s in items] == [made[4]["id"], made[3]["id"]]
    items, total = await engine.list_sessions(owner="alice", page=3, page_size=2)
    assert [s["id"] for s in items] == [made[0]["id"]]
    items, total = await engine.list_sessions(owner="alice", agent_id="a")
    assert total == 2 and {s["agent_id"] for s in items} == {"a"}
    await engine.end_session(made[0]["id"], owner="alice")
    items, total = await engine.list_sessions(owner="alice", status="ended")
    assert [s["id"] for s in items] == [made[0]["id"]] and items[0]["ended_at"] is not None


async def test_full_text_search_finds_message_content_and_titles_of_the_owner_only(
    make_engine, fake_llm
) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    zebra = await engine.create_session(owner="alice")
    await engine.send_message(zebra["id"], "tell me about zebras please", owner="alice")
    titled = await engine.create_session(owner="alice", title="Quarterly planning")
    await engine.create_session(owner="alice")
    theirs = await engine.create_session(owner="bob")
    await engine.send_message(theirs["id"], "zebras for bob", owner="bob")

    items, total = await engine.list_sessions(owner="alice", q="zebras")
    assert total == 1 and items[0]["id"] == zebra["id"]
    items, _ = await engine.list_sessions(owner="alice", q="quarterly")
    assert [s["id"] for s in items] == [titled["id"]]
    # Search syntax characters are plain text, never an error.
    for query in ['"', "a OR", "NEAR(", "100%", "*", "_"]:
        await engine.list_sessions(owner="alice", q=query)


async def test_history_pages_by_seq_and_the_newest_page_with_has_more(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    for i in range(3):
        fake_llm.enqueue(Reply(f"answer {i}"))
        await engine.send_message(session["id"], f"question {i}", owner="o")

    page, more = await engine.list_messages(session["id"], owner="o", after_seq=0, limit=4)
    assert [m["seq"] for m in page] == [1, 2, 3, 4] and more
    page, more = await engine.list_messages(session["id"], owner="o", after_seq=4, limit=4)
    assert [m["seq"] for m in page] == [5, 6] and not more

    detail = await engine.resume_session(session["id"], owner="o", limit=2)
    assert [m["content"] for m in detail["messages"]] == ["question 2", "answer 2"]
    assert detail["has_more"] is True
    assert detail["messages"][1]["cost"] != "" and detail["messages"][1]["model"] == "fake-model"


async def test_update_end_reopen_and_delete(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    session = await engine.create_session(owner="o")
    updated = await engine.update_session(
        session["id"], owner="o", title="  New\n  title ", model="fake-alt", metadata={"k": 1}
    )
    assert (updated["title"], updated["model"], updated["metadata"]) == ("New title", "fake-alt", {"k": 1})
    with pytest.raises(SessionNotFound):
        await engine.update_session(session["id"], owner="other", title="x")
    assert (await engine.end_session(session["id"], owner="o"))["status"] == "ended"
    assert (await engine.reopen_session(session["id"], owner="o"))["status"] == "active"
    await engine.delete_session(session["id"], owner="o")
    with pytest.raises(SessionNotFound):
        await engine.get_session(session["id"], owner="o")


async def test_a_session_with_a_running_turn_cannot_be_deleted(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    engine = await make_engine()
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Stall(after=1, seconds=2, reply=Reply("slow reply")))
    running = asyncio.create_task(engine.send_message(session["id"], "hi", owner="o"))
    await wait_for(lambda: len(fake_llm.requests) >= 1)
    with pytest.raises(SessionBusy):
        await engine.delete_session(session["id"], owner="o")
    assert (await running).content == "slow reply"


async def test_agent_ids_must_be_safe_slugs(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    for bad in ["../etc", "a/b", "", "x" * 65, "a\x00b", ".hidden"]:
        with pytest.raises(ValidationError):
            await engine.create_session(owner="o", agent_id=bad)


async def test_a_configured_title_model_names_the_session_after_its_first_turn(make_engine, fake_llm) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    engine = await make_engine(title_model="fake-alt")
    session = await engine.create_session(owner="o")
    fake_llm.enqueue(Reply("Sure, here is the plan."))
    fake_llm.enqueue(Reply('"Garden Planning Tips"'), model="fake-alt")
    response = await engine.send_message(session["id"], "help me   plan my garden", owner="o")
    assert response.content == "Sure, here is the plan."
    await asyncio.gather(*engine._background)
    detail = await engine.get_session(session["id"], owner="o")
    assert detail["title"] == "Garden Planning Tips"
    assert detail["metadata"]["title_usage"]["model"] == "fake-alt"
    # The title call is not a message: the totals are the turn's alone.
    assert detail["message_count"] == 2
    await engine.aclose()


async def test_a_first_message_titles_an_untitled_session_and_leaves_a_given_title(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = await make_engine()
    untitled = await engine.create_session(owner="o")
    titled = await engine.create_session(owner="o", title="Trip plans")
    for session in (untitled, titled):
        await engine.send_message(session["id"], "what should   I pack\nfor Oslo?", owner="o")
        await engine.send_message(session["id"], "and for Rome?", owner="o")

    assert (await engine.get_session(untitled["id"], owner="o"))["title"] == "what should I pack for Oslo?"
    assert (await engine.get_session(titled["id"], owner="o"))["title"] == "Trip plans"


@given(st.lists(st.sampled_from(["a", "é", "word", " ", "\t", "\n", "\u2003", "\x1f", "  "])).map("".join))
def test_a_title_is_the_text_with_whitespace_collapsed_trimmed_and_cut(text: str) -> None:
    # Read word by word up to the title's length; the same as collapsing the whole text first.
    assert clean_title(text) == re.sub(r"\s+", " ", text).strip()[:TITLE_CHARS]
    assert clean_title("x" * 100 + " tail") == "x" * TITLE_CHARS
