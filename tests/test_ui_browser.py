"""The web UI at `/`, driven in Debian's Chromium (headless) by Playwright against the real service.

Each test loads the page from the live server (uvicorn on a real port, the fake OpenAI-compatible provider
behind it) and works the UI as a person would: labels and roles to find controls, keys to send and stop.
Dropped connections are real (a TCP proxy cuts them); reloads are real page reloads.

Set UI_SCREENSHOT_DIR to save screenshots of the main screens there (docs/img/ holds the published ones).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from aria_engine.testing.fake_llm import FakeLLM, Reply, ToolCall
from tests.conftest import POSTGRES_URL
from tests.plugins.tcp_proxy import TcpProxy
from tests.test_cli_chat import create_api_key

CHROMIUM = Path("/usr/bin/chromium")
NO_CHROMIUM = "Chromium is not installed at /usr/bin/chromium (apt-get install chromium)"
if not CHROMIUM.exists():
    pytest.skip(NO_CHROMIUM, allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Bounds that only stop a broken test from hanging the run; no assertion depends on them.
HANG_GUARD_MS = 30_000
LONG_ANSWER = " ".join(f"word{i}" for i in range(60))

# Records the streaming text's length at every DOM change, to see an answer arrive in steps.
RECORD_STEPS = """() => {
  window.__steps = [];
  new MutationObserver(() => {
    const el = document.querySelector('#message-list .content.streaming');
    if (el) window.__steps.push(el.textContent.length);
  }).observe(document.getElementById('message-list'), {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    # Playwright's sync API keeps an event loop running on this thread, and database set-up calls
    # asyncio.run: build the session's migrated databases before the browser starts.
    request.getfixturevalue("sqlite_template")
    if POSTGRES_URL:
        request.getfixturevalue("postgres_database")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    context.set_default_timeout(HANG_GUARD_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(page: Any, name: str) -> None:
    target = os.environ.get("UI_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / name))


def new_session(page: Any, model: str | None = None) -> str:
    if model:
        page.locator(f'#model-select option[value="{model}"]').wait_for(state="attached")
        page.get_by_label("Model").select_option(model)
    page.get_by_role("button", name="New session").click()
    page.wait_for_selector("#send-button:not([disabled])")
    page.wait_for_function("() => location.hash.length > 1")
    session_id: str = page.evaluate("location.hash.slice(1)")
    return session_id


def send(page: Any, text: str) -> None:
    page.wait_for_selector("#send-button:not([disabled])")
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def wait_done(page: Any, finish_reason: str = "stop") -> Any:
    answer = page.locator(f'#message-list article.assistant[data-finish-reason="{finish_reason}"]').last
    answer.wait_for()
    return answer


def answer_text(answer: Any) -> str:
    return " ".join(answer.locator(".content").all_inner_texts()).strip()


def rest(server: Any, method: str, path: str, key: str | None = None, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.request(method, server.base_url + path, headers=headers, timeout=30, **kwargs)
    response.raise_for_status()
    return response.json()


def test_new_session_streams_the_answer_in_steps_with_usage(
    page: Any, live_server: Any, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(
        Reply("", thinking="The user asks about France.", tool_calls=[ToolCall("current_time", {})]),
        Reply("Paris is the **capital** of France, famous for `cafés`.", delay=0.02),
    )
    page.goto(live_server.base_url + "/")
    page.locator('#model-select option[value="fake-alt"]').wait_for(state="attached")
    options = page.get_by_label("Model").locator("option").all_inner_texts()
    assert "fake-model" in options and "fake-alt" in options
    session_id = new_session(page, "fake-model")
    page.evaluate(RECORD_STEPS)

    box = page.get_by_label("Message", exact=True)
    box.fill("Tell me about France")
    box.press("Shift+Enter")  # a new line, not a send
    box.type("in one line")
    assert page.locator("#message-list article.user").count() == 0
    box.press("Enter")
    answer = wait_done(page)

    assert answer_text(answer) == "Paris is the capital of France, famous for cafés."
    assert answer.locator("strong").inner_text() == "capital"
    assert answer.locator("code").inner_text() == "cafés"
    steps: list[int] = page.evaluate("window.__steps")
    assert len(set(steps)) >= 3, f"the answer did not arrive in steps: {steps}"
    assert steps == sorted(steps)
    thinking = answer.locator("details.thinking")
    assert not thinking.evaluate("el => el.open")  # collapsed until asked for
    thinking.locator("summary").click()
    assert thinking.locator(".thinking-text").inner_text() == "The user asks about France."
    tool = answer.locator("details.tool")
    assert tool.locator("summary").inner_text() == "Tool call: current_time"
    assert tool.locator(".tool-result.ok").inner_text().strip()  # the tool's answer, shown inline
    assert page.locator("#message-list article.user").inner_text().count("\n") >= 2  # role, line 1, line 2
    meta = answer.locator(".msg-meta").inner_text()
    assert re.search(r"fake-model · \d+ in / \d+ out tokens · \$0\.\d+ · TTFT \d+ ms · \d+ ms", meta), meta
    stored = rest(live_server, "GET", f"/api/engine/chat/sessions/{session_id}")
    assert stored["message_count"] == 4  # user, assistant with the tool call, tool result, answer
    totals = page.locator("#session-totals")
    totals.filter(has_text=f"4 messages · {stored['total_tokens']} tokens").wait_for()
    item = page.locator(f'.session-item[data-session-id="{session_id}"]')
    assert item.get_attribute("aria-current") == "true"
    screenshot(page, "chat.png")


def test_stop_button_and_escape_cancel_the_turn(page: Any, live_server: Any, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(Reply(LONG_ANSWER, delay=0.05), Reply(LONG_ANSWER, delay=0.05), Reply("Done."))
    page.goto(live_server.base_url + "/")
    session_id = new_session(page)

    send(page, "count slowly")
    page.wait_for_function(
        "() => document.querySelector('.content.streaming')?.textContent.includes('word2')"
    )
    page.get_by_role("button", name="Stop").click()
    stopped = wait_done(page, "cancelled")
    assert LONG_ANSWER.startswith(answer_text(stopped))
    assert "word59" not in answer_text(stopped)
    assert "cancelled" in stopped.locator(".msg-meta").inner_text()

    send(page, "count again")
    page.wait_for_function(
        "() => document.querySelectorAll('#message-list article.assistant').length === 2"
        " && document.querySelector('.content.streaming')?.textContent.includes('word2')"
    )
    page.keyboard.press("Escape")
    page.locator('#message-list article.assistant[data-finish-reason="cancelled"]').nth(1).wait_for()

    send(page, "and now?")
    wait_done(page)
    rows = rest(live_server, "GET", f"/api/engine/chat/sessions/{session_id}/messages")["items"]
    assert [r["finish_reason"] for r in rows if r["role"] == "assistant"] == [
        "cancelled",
        "cancelled",
        "stop",
    ]


def test_reload_mid_stream_shows_the_whole_answer_once(
    page: Any, start_server: Callable[..., Any], api_config: Callable[..., Any], fake_llm: FakeLLM
) -> None:
    server = start_server(api_config(keep_turn_on_disconnect=True))
    fake_llm.enqueue(Reply(LONG_ANSWER, delay=0.03))
    page.goto(server.base_url + "/")
    new_session(page)

    send(page, "count")
    page.wait_for_function(
        "() => document.querySelector('.content.streaming')?.textContent.includes('word3')"
    )
    page.reload()
    answer = wait_done(page)

    assert answer_text(answer) == LONG_ANSWER
    assert page.locator("#message-list article.user").count() == 1
    assert page.locator("#message-list article.assistant").count() == 1


def test_a_dropped_connection_resumes_without_losing_or_repeating_text(
    page: Any,
    start_server: Callable[..., Any],
    api_config: Callable[..., Any],
    fake_llm: FakeLLM,
    proxy_factory: Callable[[str], TcpProxy],
) -> None:
    server = start_server(api_config(keep_turn_on_disconnect=True))
    proxy = proxy_factory(server.base_url)
    fake_llm.enqueue(Reply(LONG_ANSWER, delay=0.03))
    page.goto(proxy.url + "/")
    new_session(page)
    page.evaluate(RECORD_STEPS)

    send(page, "count")
    page.wait_for_function(
        "() => document.querySelector('.content.streaming')?.textContent.includes('word3')"
    )
    proxy.cut()
    page.get_by_role("status").filter(has_text="Connection lost").wait_for()
    answer = wait_done(page)

    assert answer_text(answer) == LONG_ANSWER
    assert page.locator("#offline-banner").is_hidden()
    steps: list[int] = page.evaluate("window.__steps")
    assert steps == sorted(steps)  # the text only ever grew: nothing was replayed twice


def test_a_refused_message_is_taken_back_and_explained(
    page: Any, live_server: Any, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(Reply(LONG_ANSWER, delay=0.05))
    page.goto(live_server.base_url + "/")
    session_id = new_session(page)
    # Another client's turn holds the session: the REST send streams for a few seconds.
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(
            rest,
            live_server,
            "POST",
            f"/api/engine/chat/sessions/{session_id}/messages",
            json={"content": "x"},
        )
        while not fake_llm.requests:
            assert not other.done(), "the other client's turn ended before it was seen"
            page.wait_for_timeout(50)
        send(page, "me too")
        page.get_by_role("alert").filter(has_text=re.compile("busy|running", re.I)).wait_for()
        assert page.locator("#message-list article.user").count() == 0
        assert page.get_by_label("Message", exact=True).input_value() == "me too"
        assert other.result()["finish_reason"] == "stop"


def test_export_buttons_download_every_format(page: Any, live_server: Any, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(Reply("Exported answer."))
    page.goto(live_server.base_url + "/")
    session_id = new_session(page)
    send(page, "export me")
    wait_done(page)

    contents: dict[str, str] = {}
    for label in ("JSONL", "Markdown", "OpenClaw", "OpenAI"):
        page.locator(".export-menu summary").click()
        with page.expect_download() as download_info:
            page.get_by_role("button", name=label, exact=True).click()
        download = download_info.value
        contents[label] = Path(download.path()).read_text(encoding="utf-8")
        assert download.suggested_filename.startswith(session_id)  # the server names the file
        page.locator(".export-menu summary").click()

    jsonl = [json.loads(line) for line in contents["JSONL"].splitlines() if line.strip()]
    assert any(row.get("content") == "export me" for row in jsonl)
    assert "export me" in contents["Markdown"] and "Exported answer." in contents["Markdown"]
    openclaw = [json.loads(line) for line in contents["OpenClaw"].splitlines() if line.strip()]
    assert openclaw[0]["type"] == "session"
    openai = [json.loads(line) for line in contents["OpenAI"].splitlines() if line.strip()]
    assert [m["role"] for m in openai[0]["messages"]][-2:] == ["user", "assistant"]


def test_search_box_finds_sessions_by_message_text(page: Any, live_server: Any, fake_llm: FakeLLM) -> None:
    ids = {}
    for word in ("kumquat", "zucchini"):
        created = rest(live_server, "POST", "/api/engine/chat/sessions", json={})
        rest(
            live_server, "POST", f"/api/engine/chat/sessions/{created['id']}/messages", json={"content": word}
        )
        ids[word] = created["id"]
    page.goto(live_server.base_url + "/")
    items = page.locator(".session-item")
    items.nth(1).wait_for()
    # Newest first: the zucchini session was created last.
    assert items.first.get_attribute("data-session-id") == ids["zucchini"]

    page.get_by_label("Search sessions").fill("kumquat")
    page.wait_for_function("() => document.querySelectorAll('.session-item').length === 1")
    assert items.first.get_attribute("data-session-id") == ids["kumquat"]
    screenshot(page, "search.png")

    page.get_by_label("Search sessions").fill("durian")
    page.get_by_text("No sessions match.").wait_for()
    page.get_by_label("Search sessions").fill("")
    page.wait_for_function("() => document.querySelectorAll('.session-item').length === 2")


DEMO_CATALOG = """\
default_models: [fake-model]
providers:
  fake:
    kind: openai
    base_url: {base_url}
  offline:
    kind: openai
    base_url: ${{ARIA_UI_TEST_UNSET_URL}}
models:
  fake-model:
    provider: fake
    context_window: 32000
    max_output_tokens: 1024
  tiny-demo:
    provider: fake
    demo: true
    description: A small demo model
    context_window: 32000
    max_output_tokens: 1024
  offline-model:
    provider: offline
    context_window: 32000
    max_output_tokens: 1024
"""


def test_model_picker_labels_the_demo_model_and_unavailable_ones(
    page: Any,
    start_server: Callable[..., Any],
    api_config: Callable[..., Any],
    fake_llm: FakeLLM,
    tmp_path: Path,
) -> None:
    catalog = tmp_path / "demo-models.yaml"
    catalog.write_text(DEMO_CATALOG.format(base_url=fake_llm.base_url), encoding="utf-8")
    server = start_server(api_config(models_path=catalog))
    page.goto(server.base_url + "/")
    picker = page.get_by_label("Model")
    page.locator('#model-select option[value="offline-model"]').wait_for(state="attached")

    assert picker.locator("option:checked").inner_text() == "fake-model"  # the server's default
    assert picker.locator('option[value="tiny-demo"]').inner_text() == "tiny-demo (demo model)"
    offline = picker.locator('option[value="offline-model"]')
    assert offline.inner_text() == "offline-model (unavailable)"
    assert offline.is_disabled()

    session_id = new_session(page, "tiny-demo")
    assert "tiny-demo (demo model)" in page.locator("#session-totals").inner_text()
    assert rest(server, "GET", f"/api/engine/chat/sessions/{session_id}")["model"] == "tiny-demo"


def test_long_histories_and_session_lists_are_paged(page: Any, live_server: Any, fake_llm: FakeLLM) -> None:
    sessions = [rest(live_server, "POST", "/api/engine/chat/sessions", json={}) for _ in range(21)]
    oldest, newest = sessions[0]["id"], sessions[-1]["id"]
    for i in range(26):  # 52 rows: more than the newest page the session view loads
        path = f"/api/engine/chat/sessions/{newest}/messages"
        rest(live_server, "POST", path, json={"content": f"question {i}"})

    page.goto(f"{live_server.base_url}/#{newest}")
    messages = page.locator("#message-list")
    messages.get_by_text("question 25").wait_for()
    assert messages.get_by_text("question 0", exact=True).count() == 0
    page.get_by_role("button", name="Load earlier messages").click()
    messages.get_by_text("question 0", exact=True).wait_for()
    assert page.locator("#message-list article.user").count() == 26
    assert page.get_by_role("button", name="Load earlier messages").is_hidden()

    items = page.locator(".session-item")
    assert items.count() == 20
    assert items.first.get_attribute("data-session-id") == newest  # newest first
    page.get_by_role("button", name="Next page of sessions").click()
    page.get_by_text("Page 2 of 2").wait_for()
    assert [items.nth(i).get_attribute("data-session-id") for i in range(items.count())] == [oldest]
    page.get_by_role("button", name="Previous page of sessions").click()
    page.get_by_text("Page 1 of 2").wait_for()


XSS = (
    '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> '
    '[click me](javascript:window.__xss=3) <svg onload="window.__xss=4"></svg> '
    '<a href="javascript:window.__xss=5">link</a> **still bold**'
)


def assert_inert(page: Any) -> None:
    messages = page.locator("#message-list")
    assert page.evaluate("window.__xss") is None
    for tag in ("img", "script", "svg", "iframe"):
        assert messages.locator(tag).count() == 0, tag
    hrefs = messages.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert all(href.startswith(("http://", "https://", "mailto:")) for href in hrefs), hrefs
    assert '<img src=x onerror="window.__xss=1">' in messages.inner_text()


def test_markup_in_messages_stays_inert_text(page: Any, live_server: Any, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(
        Reply("Here it is: " + XSS, tool_calls=[ToolCall("current_time", {})]),
        Reply("Echo: " + XSS),
    )
    page.goto(live_server.base_url + "/")
    new_session(page)
    send(page, XSS)
    answer = wait_done(page)

    assert_inert(page)
    assert answer.locator("strong").first.inner_text() == "still bold"
    assert "Tool call: current_time" in answer.locator("details.tool summary").inner_text()
    assert answer.locator(".tool-result.ok").count() == 1
    page.reload()  # the history path renders the same rows from the database
    wait_done(page)
    assert_inert(page)


MARKDOWN = """# Plan
Steps:

1. Read [the docs](https://example.com/docs_(v2)).
2. Run it:

```python
print("<b>hi</b>")
```

> A quote with *emphasis*.

- one
  - nested
"""


def test_answers_render_markdown(page: Any, live_server: Any, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(Reply(MARKDOWN))
    page.goto(live_server.base_url + "/")
    new_session(page)
    send(page, "plan please")
    answer = wait_done(page)

    assert answer.locator("h3").inner_text() == "Plan"
    assert answer.locator("ol > li").count() == 2
    link = answer.locator("ol a")
    assert link.inner_text() == "the docs"
    assert link.get_attribute("href") == "https://example.com/docs_(v2)"
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    code = answer.locator("pre code.language-python")
    assert code.inner_text() == 'print("<b>hi</b>")'
    assert answer.locator("blockquote em").inner_text() == "emphasis"
    assert answer.locator("ul ul li").inner_text() == "nested"


def test_rename_end_reopen_and_delete_a_session(page: Any, live_server: Any) -> None:
    page.goto(live_server.base_url + "/")
    session_id = new_session(page)

    page.get_by_role("button", name="Rename").click()
    page.get_by_label("Title").fill("Trip planning")
    page.get_by_role("button", name="Save").click()
    page.locator("#session-title").filter(has_text="Trip planning").wait_for()
    page.locator(".session-item .session-name").filter(has_text="Trip planning").wait_for()

    page.get_by_role("button", name="End session").click()
    page.get_by_role("button", name="Reopen session").wait_for()
    assert page.get_by_label("Message", exact=True).is_disabled()
    assert rest(live_server, "GET", f"/api/engine/chat/sessions/{session_id}")["status"] == "ended"
    page.locator(".session-item .badge").filter(has_text="ended").wait_for()

    page.get_by_role("button", name="Reopen session").click()
    page.wait_for_selector("#send-button:not([disabled])")
    assert rest(live_server, "GET", f"/api/engine/chat/sessions/{session_id}")["status"] == "active"

    page.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog", name="Delete session?")
    assert "Trip planning" in dialog.inner_text()
    dialog.get_by_role("button", name="Cancel").click()
    assert httpx.get(f"{live_server.base_url}/api/engine/chat/sessions/{session_id}").status_code == 200
    page.get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Delete").click()
    page.get_by_text("No sessions yet.").wait_for()
    assert httpx.get(f"{live_server.base_url}/api/engine/chat/sessions/{session_id}").status_code == 404


def test_auth_asks_for_a_key_once_and_opens_sockets_with_tickets(
    page: Any,
    start_server: Callable[..., Any],
    api_config: Callable[..., Any],
    fake_llm: FakeLLM,
    database_url: str,
) -> None:
    server = start_server(api_config())
    key = create_api_key(database_url, "browser-user")
    fake_llm.enqueue(Reply("Hello, authenticated user."))
    socket_urls: list[str] = []
    page.on("websocket", lambda ws: socket_urls.append(ws.url))
    page.goto(server.base_url + "/")

    dialog = page.get_by_role("dialog", name="API key required")
    dialog.wait_for()
    screenshot(page, "auth.png")
    dialog.get_by_label("API key").fill("not-a-real-key")
    dialog.get_by_role("button", name="Continue").click()
    dialog.get_by_text("was not accepted").wait_for()
    dialog.get_by_label("API key").fill(key)
    dialog.get_by_role("button", name="Continue").click()
    page.get_by_text("No sessions yet.").wait_for()

    session_id = new_session(page)
    send(page, "hello")
    answer = wait_done(page)
    assert answer_text(answer) == "Hello, authenticated user."
    assert page.evaluate("sessionStorage.getItem('aria.apiKey')") == key

    page.reload()  # the key is kept for the tab: no second prompt
    page.wait_for_selector("#send-button:not([disabled])")  # the socket is open again
    assert not dialog.is_visible()
    assert len(socket_urls) == 2
    assert all("?ticket=" in url for url in socket_urls)
    assert not any(key in url for url in socket_urls)
    owned = rest(server, "GET", "/api/engine/chat/sessions", key=key)["items"]
    assert [s["id"] for s in owned] == [session_id]


def test_phone_width_layout_hides_and_shows_the_session_list(
    browser: Any, live_server: Any, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(Reply("Small screens work too."))
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    context.set_default_timeout(HANG_GUARD_MS)
    page = context.new_page()
    try:
        page.goto(live_server.base_url + "/")
        sidebar = page.get_by_role("complementary", name="Sessions")
        page.get_by_role("button", name="Show sessions").click()
        page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
        new_session(page)
        page.get_by_role("button", name="Close session list").click()
        page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().right <= 0")
        send(page, "hi from a phone")
        wait_done(page)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, "the page scrolls sideways at phone width"
        assert sidebar.count() == 1
        screenshot(page, "phone.png")
    finally:
        context.close()
