"""`aria-engine chat`, driven with piped input against the real service on a real port.

The server is the real app (uvicorn in a thread) over the test's database, its provider the fake
OpenAI-compatible server. Ctrl-C and dropped connections are real: a SIGINT sent to a child process, and a
TCP proxy between client and server that cuts every connection mid-answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from aria_engine.auth import create_key
from aria_engine.cli import cli
from aria_engine.config import REPO_ROOT
from aria_engine.db.engine import create_engine, create_session_factory
from aria_engine.testing.fake_llm import FakeLLM, Reply
from tests.plugins.tcp_proxy import TcpProxy

# Bounds that only stop a broken test from hanging the run; no assertion depends on them.
HANG_GUARD_SECONDS = 60.0

LONG_ANSWER = " ".join(f"word{i}" for i in range(60))


class ChatProcess:
    """`python -m aria_engine chat` as a child process with pipes, for signals and live output."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ARIA_")}
        child_env.update(env or {})
        child_env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aria_engine", "chat", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=child_env,
        )
        self.output = ""
        self.closed = False  # the child closed its output (it is exiting)
        self._selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def wait_for(self, predicate: Callable[[str], bool]) -> str:
        """Read output until `predicate(output)` holds; fail (not hang) if the child ends or stalls."""
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while not predicate(self.output):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"output never matched; got:\n{self.output}"
            if not self._selector.select(timeout=min(remaining, 1.0)):
                continue
            assert self.proc.stdout is not None
            chunk = self.proc.stdout.read()
            if chunk == b"":
                self.closed = True
                assert predicate(self.output), f"chat exited early; output:\n{self.output}"
                break
            if chunk:
                self.output += chunk.decode(errors="replace")
        return self.output

    def finish(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.wait_for(lambda _: self.closed)
        return self.proc.wait(timeout=HANG_GUARD_SECONDS)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._selector.close()


@pytest.fixture
def chat_process() -> Iterator[Callable[..., ChatProcess]]:
    started: list[ChatProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ChatProcess:
        process = ChatProcess(*args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def create_api_key(database_url: str, name: str) -> str:
    """Create an API key in the test's database: from then on the server requires keys."""

    async def make() -> str:
        engine = create_engine(database_url)
        try:
            key, _ = await create_key(create_session_factory(engine), name)
        finally:
            await engine.dispose()
        return key

    # A thread of its own: this may be called while an event loop runs (the fixtures' or a test's).
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make()).result()


def run_chat(args: list[str], stdin: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, ["chat", *args], input=stdin, env=env, catch_exceptions=False)


def sessions_of(base_url: str, key: str | None = None) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{base_url}/api/engine/chat/sessions", headers=headers, timeout=30)
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def messages_of(base_url: str, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base_url}/api/engine/chat/sessions/{session_id}/messages", timeout=30)
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_chat_streams_the_answer_and_prints_tokens_and_cost(live_server: Any, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(Reply("The capital of France is Paris.", thinking="Recall geography."))

    result = run_chat(
        ["--url", live_server.base_url, "--thinking"], "What is the capital of France?\n/quit\n"
    )

    assert result.exit_code == 0, result.output
    assert "The capital of France is Paris." in result.output
    assert "[thinking] Recall geography." in result.output  # no colour on a pipe: a marker instead
    assert " in / " in result.output and " out tokens" in result.output
    assert "$0." in result.output  # fake-model is priced, so the answer cost something
    (session,) = sessions_of(live_server.base_url)
    rows = messages_of(live_server.base_url, session["id"])
    assert [r["role"] for r in rows] == ["user", "assistant"]
    assert rows[1]["content"] == "The capital of France is Paris."
    assert rows[1]["finish_reason"] == "stop"


def test_slash_commands_manage_sessions_models_and_exports(
    live_server: Any, fake_llm: FakeLLM, tmp_path: Any
) -> None:
    fake_llm.enqueue(Reply("First answer."), Reply("Second answer."))
    export_path = tmp_path / "out.md"
    script = "\n".join(
        [
            "/help",
            "hello kumquat",
            "/export markdown " + str(export_path),
            "/new fake-alt",
            "/model fake-model",
            "hello zucchini",
            "/sessions kumquat",
            "/quit",
            "never sent",
        ]
    )

    result = run_chat(["--url", live_server.base_url], script + "\n")

    assert result.exit_code == 0, result.output
    assert "/switch ID" in result.output  # the help text
    assert "First answer." in result.output and "Second answer." in result.output
    markdown = export_path.read_text(encoding="utf-8")
    assert "hello kumquat" in markdown and "First answer." in markdown
    sessions = sessions_of(live_server.base_url)
    assert len(sessions) == 2
    by_first_message = {messages_of(live_server.base_url, s["id"])[0]["content"]: s for s in sessions}
    first, second = by_first_message["hello kumquat"], by_first_message["hello zucchini"]
    assert second["model"] == "fake-model"  # created with fake-alt, then switched by /model
    # `/sessions kumquat` lists only the session whose messages mention it.
    listed = re.findall(r"^[* ] ([0-9a-f-]{36})  ", result.output, flags=re.MULTILINE)
    assert listed == [first["id"]]
    assert "never sent" not in json.dumps([messages_of(live_server.base_url, s["id"]) for s in sessions])


def test_switch_continues_an_existing_session_and_exports_to_screen(
    live_server: Any, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(Reply("One."), Reply("Two."))
    first = run_chat(["--url", live_server.base_url], "remember apples\n")
    assert first.exit_code == 0, first.output  # end of input leaves like /quit
    (session,) = sessions_of(live_server.base_url)

    second = run_chat(
        ["--url", live_server.base_url],
        f"/switch {session['id']}\nand pears\n/export jsonl\n",
    )

    assert second.exit_code == 0, second.output
    rows = messages_of(live_server.base_url, session["id"])
    assert [r["content"] for r in rows] == ["remember apples", "One.", "and pears", "Two."]
    exported = [json.loads(line) for line in second.output.splitlines() if line.startswith("{")]
    contents = [row.get("content") for row in exported]
    assert "remember apples" in contents and "Two." in contents


def test_mistakes_are_reported_and_the_chat_goes_on(live_server: Any, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(Reply("Still here."))
    script = (
        "/bogus\n/model no-such-model\n/switch 00000000-0000-0000-0000-000000000000\n/export pdf\nping?\n"
    )

    result = run_chat(["--url", live_server.base_url], script)

    assert result.exit_code == 0, result.output
    assert "error: unknown command /bogus" in result.output
    assert result.output.count("error: ") == 4
    assert "Still here." in result.output
    assert "Traceback" not in result.output


def test_an_unknown_session_or_server_is_one_clean_line(live_server: Any) -> None:
    missing = run_chat(
        ["--url", live_server.base_url, "--session", "00000000-0000-0000-0000-000000000000"], ""
    )
    assert missing.exit_code == 1
    assert missing.output.startswith("Error: ")
    assert "Traceback" not in missing.output

    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    unreachable = run_chat(["--url", f"http://127.0.0.1:{port}"], "")
    assert unreachable.exit_code == 1
    assert "cannot reach" in unreachable.output


def test_ctrl_c_cancels_the_turn_and_keeps_the_chat_open(
    live_server: Any, fake_llm: FakeLLM, chat_process: Callable[..., ChatProcess]
) -> None:
    fake_llm.enqueue(Reply(LONG_ANSWER, delay=0.05), Reply("After the stop."))
    chat = chat_process("--url", live_server.base_url)
    chat.wait_for(lambda out: "[type a message" in out)

    chat.send("tell me a long story")
    chat.wait_for(lambda out: "word3" in out)
    chat.proc.send_signal(signal.SIGINT)
    chat.wait_for(lambda out: "cancelled]" in out)
    chat.send("are you still there?")
    chat.wait_for(lambda out: "After the stop." in out)
    chat.send("/quit")

    assert chat.finish() == 0
    assert "word59" not in chat.output
    (session,) = sessions_of(live_server.base_url)
    rows = messages_of(live_server.base_url, session["id"])
    assert [(r["role"], r["finish_reason"]) for r in rows] == [
        ("user", None),
        ("assistant", "cancelled"),
        ("user", None),
        ("assistant", "stop"),
    ]
    assert LONG_ANSWER.startswith(rows[1]["content"])


def test_a_dropped_connection_is_resumed_without_losing_or_repeating_text(
    start_server: Callable[..., Any],
    api_config: Callable[..., Any],
    fake_llm: FakeLLM,
    proxy_factory: Callable[[str], TcpProxy],
    chat_process: Callable[..., ChatProcess],
) -> None:
    server = start_server(api_config(keep_turn_on_disconnect=True))
    proxy = proxy_factory(server.base_url)
    fake_llm.enqueue(Reply(LONG_ANSWER, delay=0.03))
    chat = chat_process("--url", proxy.url)
    chat.wait_for(lambda out: "[type a message" in out)

    chat.send("count for me")
    chat.wait_for(lambda out: "word5" in out)
    proxy.cut()
    chat.wait_for(lambda out: "tokens ·" in out)
    chat.send("/quit")

    assert chat.finish() == 0
    assert "[connection lost" in chat.output
    printed = " ".join(w for w in chat.output.split() if w.startswith("word"))
    assert printed == LONG_ANSWER  # every word once, in order, across the reconnect


def test_api_key_comes_from_the_environment(
    start_server: Callable[..., Any], api_config: Callable[..., Any], fake_llm: FakeLLM, database_url: str
) -> None:
    server = start_server(api_config())
    key = create_api_key(database_url, "cli-user")
    fake_llm.enqueue(Reply("Authenticated answer."))

    refused = run_chat(["--url", server.base_url], "hi\n")
    assert refused.exit_code == 1
    assert "ARIA_API_KEY" in refused.output

    accepted = run_chat(["--url", server.base_url], "hi\n", env={"ARIA_API_KEY": key})
    assert accepted.exit_code == 0, accepted.output
    assert "Authenticated answer." in accepted.output
    assert key not in accepted.output
    (session,) = sessions_of(server.base_url, key)
    assert session["message_count"] == 2
