/*
 * Aria Engine web chat: plain JavaScript over the engine's public API, no build step.
 *
 * REST (/api/engine/chat/...) for sessions, history and exports; one WebSocket (/ws/chat/{id}) per open
 * session for streaming turns. What this file keeps true:
 * - Message text reaches the page only as text nodes (see markdown.js): nothing a model or user writes
 *   can run script.
 * - A turn's text is neither lost nor duplicated across reconnects and reloads: every event carries
 *   `turn_id` and a per-turn `seq`; we remember the last `seq` applied, ask the server to `resume` after
 *   it, and drop anything at or below it. The in-flight turn id survives a reload in sessionStorage.
 * - Per-token work is constant: a delta becomes one new text node; Markdown is rendered once, when a
 *   text segment is complete.
 * - The API key (auth mode) lives in sessionStorage, goes out only as a Bearer header, and WebSockets
 *   authenticate with a short-lived ticket, never with the key in a URL.
 */
(function () {
  "use strict";

  const API = "/api/engine/chat";
  const KEY_STORAGE = "aria.apiKey";
  const INFLIGHT_STORAGE = "aria.inflight";
  const PAGE_SIZE = 20;
  const HISTORY_PAGE = 50;
  const PING_INTERVAL_MS = 25000;
  const MAX_BACKOFF_MS = 10000;
  const CLOSE_POLICY = 1008; // the server refuses this socket (auth, origin): retrying will not help

  const $ = (id) => document.getElementById(id);
  const ui = {
    sidebar: $("sidebar"),
    modelSelect: $("model-select"),
    newSessionForm: $("new-session-form"),
    searchInput: $("search-input"),
    searchForm: $("search-form"),
    sessionList: $("session-list"),
    pagePrev: $("page-prev"),
    pageNext: $("page-next"),
    pageInfo: $("page-info"),
    title: $("session-title"),
    totals: $("session-totals"),
    actions: $("chat-actions"),
    rename: $("rename-session"),
    toggle: $("toggle-session"),
    del: $("delete-session"),
    messages: $("messages"),
    messageList: $("message-list"),
    loadEarlier: $("load-earlier"),
    emptyHint: $("empty-hint"),
    composer: $("composer"),
    input: $("composer-input"),
    send: $("send-button"),
    stop: $("stop-button"),
    optThinking: $("opt-thinking"),
    optTools: $("opt-tools"),
    banner: $("offline-banner"),
    toast: $("toast"),
    srStatus: $("sr-status"),
    authDialog: $("auth-dialog"),
    authForm: $("auth-form"),
    authKey: $("auth-key"),
    authMessage: $("auth-message"),
    renameDialog: $("rename-dialog"),
    renameForm: $("rename-form"),
    renameInput: $("rename-input"),
    confirmDialog: $("confirm-dialog"),
    confirmForm: $("confirm-form"),
    confirmMessage: $("confirm-message"),
  };

  const state = {
    apiKey: sessionStorage.getItem(KEY_STORAGE) || "",
    keyPrompt: null, // the pending "ask for a key" promise, shared by concurrent 401s
    openToken: 0, // bumped by every openSession; stale responses are dropped
    models: new Map(), // id -> model from /api/engine/models, to label demo models everywhere
    page: 1,
    pages: 1,
    q: "",
    session: null,
    firstSeq: null,
    ws: null,
    wsSessionId: null,
    reconnectAttempt: 0,
    reconnectTimer: null,
    pingTimer: null,
    turn: null, // {turnId, lastSeq, view, done}
    pendingSend: null, // {content, enable_thinking, enable_tools, idempotency_key} until `start` arrives
    pendingBubble: null, // the page's copy of that message, removed if the server refuses it
  };

  // ── small helpers ──────────────────────────────────────────────────────────────────────────────

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function uuid4() {
    // crypto.randomUUID needs a secure context; getRandomValues works on plain-http LAN addresses too.
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function formatCost(value) {
    const n = Number(value || 0);
    if (!n) return "$0";
    return "$" + n.toFixed(6).replace(/0+$/, "").replace(/\.$/, "");
  }

  function formatTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? "" : d.toLocaleString();
  }

  let toastTimer = null;
  function toast(message) {
    ui.toast.textContent = message;
    ui.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 6000);
  }

  function announce(message) {
    ui.srStatus.textContent = message;
  }

  function modelLabel(id) {
    if (!id) return "";
    const model = state.models.get(id);
    return model && model.is_demo ? `${id} (demo model)` : id;
  }

  // ── REST ───────────────────────────────────────────────────────────────────────────────────────

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function apiError(res) {
    let code = "http_" + res.status;
    let message = res.statusText || "Request failed";
    try {
      const body = await res.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      } else if (body && typeof body.detail === "string") {
        message = body.detail;
      }
    } catch (_) {
      // A non-JSON error body: keep the status text.
    }
    return new ApiError(res.status, code, message);
  }

  function askForKey(rejected) {
    if (state.keyPrompt) return state.keyPrompt;
    state.keyPrompt = new Promise((resolve) => {
      ui.authMessage.textContent = rejected
        ? "That API key was not accepted. Enter a valid key."
        : "This server needs an API key. It is kept only for this browser tab.";
      ui.authKey.value = "";
      ui.authForm.onsubmit = () => {
        const key = ui.authKey.value.trim();
        if (!key) return;
        state.apiKey = key;
        sessionStorage.setItem(KEY_STORAGE, key);
        state.keyPrompt = null;
        resolve(key);
      };
      ui.authDialog.showModal();
      ui.authKey.focus();
    });
    return state.keyPrompt;
  }

  async function api(path, options = {}) {
    const { method = "GET", body, raw = false } = options;
    for (;;) {
      const headers = { Accept: "application/json" };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      if (state.apiKey) headers.Authorization = "Bearer " + state.apiKey;
      const sentKey = state.apiKey;
      const res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (res.status === 401) {
        // Another request may already have obtained a new key while this one was in flight.
        if (state.apiKey === sentKey) await askForKey(Boolean(sentKey));
        continue;
      }
      if (!res.ok) throw await apiError(res);
      if (raw) return res;
      if (res.status === 204) return null;
      return res.json();
    }
  }

  function reportError(err) {
    console.error(err);
    toast(err instanceof ApiError ? err.message : "Something went wrong. Please try again.");
  }

  // ── models and session list ────────────────────────────────────────────────────────────────────

  async function loadModels() {
    let data;
    try {
      data = await api("/api/engine/models");
    } catch (err) {
      reportError(err);
      return;
    }
    const models = Array.isArray(data) ? data : data.items || data.models || [];
    state.models = new Map(models.map((m) => [m.id, m]));
    ui.modelSelect.replaceChildren();
    const fallback = el("option", null, "Server default");
    fallback.value = "";
    ui.modelSelect.appendChild(fallback);
    for (const m of models) {
      const id = m.id || m.name;
      if (!id) continue;
      let label = modelLabel(id);
      if (m.available === false) label += " (unavailable)";
      const option = el("option", null, label);
      option.value = id;
      option.disabled = m.available === false || m.enabled === false;
      if (m.description) option.title = m.description;
      if (m.is_default || m.default) option.selected = true;
      ui.modelSelect.appendChild(option);
    }
  }

  async function loadSessions() {
    const params = new URLSearchParams({ page: String(state.page), page_size: String(PAGE_SIZE) });
    if (state.q) params.set("q", state.q);
    let data;
    try {
      data = await api(`${API}/sessions?${params}`);
    } catch (err) {
      reportError(err);
      return;
    }
    state.pages = Math.max(1, data.pages || 1);
    renderSessionList(data.items || []);
    ui.pageInfo.textContent = `Page ${data.page || state.page} of ${state.pages}`;
    ui.pagePrev.disabled = state.page <= 1;
    ui.pageNext.disabled = state.page >= state.pages;
  }

  function renderSessionList(items) {
    const current = state.session && state.session.id;
    const nodes = items.map((s) => {
      const li = el("li");
      const button = el("button", "session-item");
      button.type = "button";
      button.dataset.sessionId = s.id;
      if (s.id === current) button.setAttribute("aria-current", "true");
      button.appendChild(el("span", "session-name", s.title || "Untitled session"));
      const meta = el("span", "session-meta");
      meta.textContent = [modelLabel(s.model), `${s.message_count || 0} msgs`, formatTime(s.updated_at || s.created_at)]
        .filter(Boolean).join(" · ");
      button.appendChild(meta);
      if (s.status === "ended") button.appendChild(el("span", "badge", "ended"));
      button.addEventListener("click", () => {
        openSession(s.id);
        document.body.classList.remove("sidebar-open");
      });
      li.appendChild(button);
      return li;
    });
    if (!nodes.length) nodes.push(el("li", "session-empty", state.q ? "No sessions match." : "No sessions yet."));
    ui.sessionList.replaceChildren(...nodes);
  }

  // ── message views ──────────────────────────────────────────────────────────────────────────────

  function userBubble(row) {
    const article = el("article", "msg user");
    article.dataset.role = "user";
    if (row.turn_id) article.dataset.turnId = row.turn_id;
    if (row.seq !== undefined) article.dataset.seq = String(row.seq);
    article.appendChild(el("div", "msg-role", "You"));
    const body = el("div", "msg-body content");
    body.appendChild(AriaMarkdown.render(row.content));
    article.appendChild(body);
    return article;
  }

  function makeAssistantView(turnId) {
    const article = el("article", "msg assistant");
    article.dataset.role = "assistant";
    if (turnId) article.dataset.turnId = turnId;
    article.appendChild(el("div", "msg-role", "Assistant"));
    const body = el("div", "msg-body");
    const meta = el("p", "msg-meta");
    article.append(body, meta);
    return { turnId, article, body, meta, thinkingText: null, contentEl: null, chunks: null, tools: new Map() };
  }

  function addThinking(view, text) {
    if (!view.thinkingText) {
      const details = el("details", "thinking");
      details.appendChild(el("summary", null, "Thinking"));
      view.thinkingText = el("div", "thinking-text");
      details.appendChild(view.thinkingText);
      view.body.appendChild(details);
    }
    view.thinkingText.appendChild(document.createTextNode(text));
  }

  function addToken(view, text) {
    if (!view.contentEl) {
      view.contentEl = el("div", "content streaming");
      view.chunks = [];
      view.body.appendChild(view.contentEl);
    }
    view.chunks.push(text);
    view.contentEl.appendChild(document.createTextNode(text));
  }

  // Close the current text segment: render its Markdown once. A later delta opens a new segment.
  function flushSegment(view) {
    if (view.contentEl) {
      view.contentEl.replaceChildren(AriaMarkdown.render(view.chunks.join("")));
      view.contentEl.classList.remove("streaming");
    }
    view.contentEl = null;
    view.chunks = null;
    view.thinkingText = null;
  }

  function addStaticContent(view, text) {
    const content = el("div", "content");
    content.appendChild(AriaMarkdown.render(text));
    view.body.appendChild(content);
  }

  function addToolCall(view, id, name, args) {
    flushSegment(view);
    const details = el("details", "tool");
    details.open = true;
    details.dataset.toolCallId = id || "";
    details.appendChild(el("summary", null, `Tool call: ${name || "tool"}`));
    details.appendChild(el("pre", "tool-args", typeof args === "string" ? args : JSON.stringify(args)));
    const result = el("pre", "tool-result pending", "running…");
    details.appendChild(result);
    view.body.appendChild(details);
    if (id) view.tools.set(id, result);
  }

  function addToolResult(view, id, name, content, success) {
    let result = id ? view.tools.get(id) : null;
    if (!result) {
      addToolCall(view, id, name, "");
      result = id ? view.tools.get(id) : view.body.lastChild.lastChild;
    }
    result.textContent = content == null ? "" : String(content);
    result.classList.remove("pending");
    result.classList.add(success === false ? "failed" : "ok");
    result.setAttribute("aria-label", success === false ? "Tool failed" : "Tool result");
  }

  function setMeta(view, info) {
    const parts = [];
    if (info.model) parts.push(info.model);
    parts.push(`${info.input_tokens || 0} in / ${info.output_tokens || 0} out tokens`);
    parts.push(formatCost(info.cost));
    if (info.ttft_ms != null) parts.push(`TTFT ${info.ttft_ms} ms`);
    if (info.latency_ms != null) parts.push(`${info.latency_ms} ms`);
    if (info.finish_reason && info.finish_reason !== "stop") parts.push(info.finish_reason);
    view.meta.textContent = parts.join(" · ");
    if (info.finish_reason) view.article.dataset.finishReason = info.finish_reason;
  }

  function addError(view, message) {
    flushSegment(view);
    view.body.appendChild(el("p", "msg-error", message));
  }

  function renderRows(rows) {
    const frag = document.createDocumentFragment();
    let view = null;
    for (const row of rows) {
      if (row.role === "user") {
        frag.appendChild(userBubble(row));
        view = null;
        continue;
      }
      if (row.role !== "assistant" && row.role !== "tool") continue;
      if (!view || view.turnId !== row.turn_id) {
        view = makeAssistantView(row.turn_id);
        frag.appendChild(view.article);
      }
      if (row.role === "tool") {
        const success = row.metadata && row.metadata.success === false ? false : true;
        addToolResult(view, row.tool_call_id, row.tool_name, row.content, success);
        continue;
      }
      if (row.thinking) {
        addThinking(view, row.thinking);
        view.thinkingText = null;
      }
      if (row.content) addStaticContent(view, row.content);
      for (const call of row.tool_calls || []) {
        const fn = call.function || call;
        addToolCall(view, call.id, fn.name, fn.arguments);
      }
      if (row.finish_reason !== "tool_calls") setMeta(view, row);
    }
    return frag;
  }

  // ── scrolling ──────────────────────────────────────────────────────────────────────────────────

  // Follow the answer while the reader is at the bottom; stop following once they scroll up. Layout is
  // read at most once per frame (on scroll, and when a frame's deltas are drawn), never per token.
  let followBottom = true;
  let scrollPending = false;
  function stickToBottom() {
    if (!followBottom || scrollPending) return;
    scrollPending = true;
    requestAnimationFrame(() => {
      scrollPending = false;
      if (followBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
    });
  }

  function onMessagesScroll() {
    const m = ui.messages;
    followBottom = m.scrollHeight - m.scrollTop - m.clientHeight < 120;
  }

  // ── the open session ───────────────────────────────────────────────────────────────────────────

  function renderHeader() {
    const s = state.session;
    if (!s) {
      ui.title.textContent = "No session selected";
      ui.totals.textContent = "";
      ui.actions.hidden = true;
      return;
    }
    ui.title.textContent = s.title || "Untitled session";
    const totals = [
      modelLabel(s.model),
      `${s.message_count || 0} messages`,
      `${s.total_tokens || 0} tokens`,
      formatCost(s.total_cost_usd ?? s.total_cost),
    ];
    if (s.status === "ended") totals.push("ended");
    ui.totals.textContent = totals.filter(Boolean).join(" · ");
    ui.actions.hidden = false;
    ui.toggle.textContent = s.status === "ended" ? "Reopen" : "End";
    ui.toggle.setAttribute("aria-label", s.status === "ended" ? "Reopen session" : "End session");
    for (const b of ui.sessionList.querySelectorAll(".session-item")) {
      if (b.dataset.sessionId === s.id) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    }
    updateComposer();
  }

  function isBusy() {
    return Boolean(state.pendingSend || (state.turn && !state.turn.done));
  }

  function updateComposer() {
    const s = state.session;
    const open = Boolean(s && s.status !== "ended");
    const connected = Boolean(state.ws && state.ws.readyState === WebSocket.OPEN);
    const busy = isBusy();
    ui.input.disabled = !open;
    ui.send.disabled = !open || !connected || busy;
    ui.stop.hidden = !busy;
    ui.input.placeholder = open
      ? "Message (Enter sends, Shift+Enter for a new line, Esc stops)"
      : s ? "This session has ended. Reopen it to continue." : "Pick or create a session first.";
  }

  function inflightFor(sessionId) {
    try {
      const saved = JSON.parse(sessionStorage.getItem(INFLIGHT_STORAGE) || "null");
      return saved && saved.session_id === sessionId ? saved.turn_id : null;
    } catch (_) {
      return null;
    }
  }

  async function openSession(id) {
    closeSocket();
    state.turn = null;
    state.pendingSend = null;
    state.pendingBubble = null;
    // Clicks can outrun the network: only the newest open may draw the page.
    const token = ++state.openToken;
    let detail;
    try {
      detail = await api(`${API}/sessions/${encodeURIComponent(id)}`);
      if (token !== state.openToken) return;
    } catch (err) {
      if (token !== state.openToken) return;
      if (err instanceof ApiError && err.status === 404) {
        history.replaceState(null, "", location.pathname);
        state.session = null;
        renderHeader();
        toast("That session no longer exists.");
        return;
      }
      reportError(err);
      return;
    }
    const rows = detail.messages || [];
    delete detail.messages;
    state.session = detail;
    history.replaceState(null, "", "#" + detail.id);
    ui.messageList.replaceChildren(renderRows(rows));
    ui.emptyHint.hidden = true;
    state.firstSeq = rows.length ? rows[0].seq : null;
    ui.loadEarlier.hidden = !(detail.has_more && state.firstSeq > 1);
    renderHeader();
    followBottom = true;
    ui.messages.scrollTop = ui.messages.scrollHeight;

    // A turn still running (this tab reloaded mid-stream, or another client's turn): rebuild it from the
    // server's event log instead of the partial rows, so its text is shown once, in full.
    const turnId = detail.active_turn_id || inflightFor(detail.id);
    const finished = turnId && rows.some((r) => r.turn_id === turnId && r.role === "assistant"
      && r.finish_reason && r.finish_reason !== "tool_calls");
    if (turnId && !finished) {
      for (const node of ui.messageList.querySelectorAll(`article.assistant[data-turn-id="${CSS.escape(turnId)}"]`)) {
        node.remove();
      }
      state.turn = { turnId, lastSeq: 0, view: null, done: false };
    } else {
      sessionStorage.removeItem(INFLIGHT_STORAGE);
    }
    if (detail.status !== "ended") connect(detail.id);
    updateComposer();
  }

  async function refreshSession() {
    if (!state.session) return;
    try {
      const detail = await api(`${API}/sessions/${encodeURIComponent(state.session.id)}`);
      delete detail.messages;
      state.session = detail;
      renderHeader();
    } catch (err) {
      reportError(err);
    }
  }

  async function loadEarlier() {
    const first = state.firstSeq;
    if (!state.session || !first || first <= 1) return;
    const limit = Math.min(HISTORY_PAGE, first - 1);
    const after = Math.max(0, first - 1 - limit);
    let data;
    try {
      data = await api(`${API}/sessions/${encodeURIComponent(state.session.id)}/messages?after_seq=${after}&limit=${limit}`);
    } catch (err) {
      reportError(err);
      return;
    }
    const rows = (Array.isArray(data) ? data : data.items || data.messages || []).filter((r) => r.seq < first);
    const previousHeight = ui.messages.scrollHeight;
    ui.messageList.prepend(renderRows(rows));
    ui.messages.scrollTop += ui.messages.scrollHeight - previousHeight;
    state.firstSeq = rows.length ? rows[0].seq : 1;
    ui.loadEarlier.hidden = state.firstSeq <= 1;
  }

  // ── WebSocket ──────────────────────────────────────────────────────────────────────────────────

  async function socketUrl(sessionId) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = `${scheme}//${location.host}/ws/chat/${encodeURIComponent(sessionId)}`;
    if (state.apiKey) {
      // A single-use ticket, so the key itself never appears in a URL or a server log.
      const { ticket } = await api(`${API}/ws-ticket`, { method: "POST", body: { session_id: sessionId } });
      url += "?ticket=" + encodeURIComponent(ticket);
    }
    return url;
  }

  async function connect(sessionId) {
    state.wsSessionId = sessionId;
    clearTimeout(state.reconnectTimer);
    let url;
    try {
      url = await socketUrl(sessionId);
    } catch (err) {
      if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) {
        toast(err.message); // the session is gone or not ours: retrying cannot help
        return;
      }
      scheduleReconnect(sessionId);
      return;
    }
    if (state.wsSessionId !== sessionId) return; // the user switched sessions meanwhile
    const ws = new WebSocket(url);
    state.ws = ws;
    ws.onopen = () => onOpen(ws);
    ws.onmessage = (e) => {
      if (ws !== state.ws) return;
      let event;
      try {
        event = JSON.parse(e.data);
      } catch (_) {
        return;
      }
      handleEvent(event);
    };
    ws.onclose = (e) => onClose(ws, sessionId, e);
  }

  function onOpen(ws) {
    if (ws !== state.ws) return;
    state.reconnectAttempt = 0;
    ui.banner.hidden = true;
    clearInterval(state.pingTimer);
    state.pingTimer = setInterval(() => sendFrame({ type: "ping" }), PING_INTERVAL_MS);
    const turn = state.turn;
    if (turn && !turn.done) {
      sendFrame({ type: "resume", turn_id: turn.turnId, after_seq: turn.lastSeq });
    } else if (state.pendingSend) {
      // Sent before the drop but no `start` seen: the same idempotency key makes a resend safe.
      sendFrame({ type: "message", ...state.pendingSend });
    }
    updateComposer();
  }

  function onClose(ws, sessionId, e) {
    if (ws !== state.ws) return;
    state.ws = null;
    clearInterval(state.pingTimer);
    updateComposer();
    if (state.wsSessionId !== sessionId) return;
    if (e.code === CLOSE_POLICY) {
      toast("The server refused the chat connection" + (e.reason ? `: ${e.reason}` : "."));
      return;
    }
    scheduleReconnect(sessionId);
  }

  function scheduleReconnect(sessionId) {
    ui.banner.hidden = false;
    const base = Math.min(MAX_BACKOFF_MS, 500 * 2 ** state.reconnectAttempt);
    state.reconnectAttempt += 1;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(() => {
      if (state.wsSessionId === sessionId) connect(sessionId);
    }, base / 2 + Math.random() * (base / 2));
  }

  function closeSocket() {
    state.wsSessionId = null;
    clearTimeout(state.reconnectTimer);
    clearInterval(state.pingTimer);
    ui.banner.hidden = true;
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.close(1000);
    }
  }

  function sendFrame(frame) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  // ── turn events ────────────────────────────────────────────────────────────────────────────────

  function turnFor(event) {
    let turn = state.turn;
    if (!turn || turn.turnId !== event.turn_id) {
      turn = { turnId: event.turn_id, lastSeq: 0, view: null, done: false };
      state.turn = turn;
    }
    if (!turn.view) {
      turn.view = makeAssistantView(turn.turnId);
      ui.messageList.appendChild(turn.view.article);
    }
    return turn;
  }

  function handleEvent(event) {
    if (event.type === "pong") return;
    // Turn events always carry a seq; an error without one is about a request (a refused message, a
    // resume of a turn the server no longer knows), not part of a turn's stream.
    if (!event.turn_id || typeof event.seq !== "number") {
      if (event.type === "error") onStrayError(event);
      return;
    }
    const turn = turnFor(event);
    if (event.seq <= turn.lastSeq) return; // already applied before a reconnect
    turn.lastSeq = event.seq;
    const view = turn.view;
    switch (event.type) {
      case "start":
        state.pendingSend = null;
        if (state.pendingBubble) state.pendingBubble.dataset.turnId = event.turn_id;
        state.pendingBubble = null;
        sessionStorage.setItem(INFLIGHT_STORAGE, JSON.stringify({ session_id: event.session_id
          || (state.session && state.session.id), turn_id: event.turn_id }));
        announce("Assistant is answering");
        break;
      case "thinking":
        addThinking(view, event.content);
        break;
      case "token":
        addToken(view, event.content);
        break;
      case "tool_call":
        addToolCall(view, event.id, event.name, event.arguments);
        break;
      case "tool_result":
        addToolResult(view, event.id, event.name, event.content, event.success);
        break;
      case "error":
        addError(view, event.message || "The turn failed.");
        break;
      case "done":
        flushSegment(view);
        setMeta(view, event);
        turn.done = true;
        state.pendingSend = null;
        sessionStorage.removeItem(INFLIGHT_STORAGE);
        announce(event.finish_reason === "stop" ? "Answer complete" : `Answer ended: ${event.finish_reason}`);
        refreshSession();
        loadSessions();
        break;
      default:
        break;
    }
    updateComposer();
    stickToBottom();
  }

  function onStrayError(event) {
    const turn = state.turn;
    if (turn && !turn.done && event.turn_id === turn.turnId) {
      // The resume target is gone (finished and expired from the log): the stored rows are the truth.
      state.turn = null;
      sessionStorage.removeItem(INFLIGHT_STORAGE);
      if (state.session) openSession(state.session.id);
      return;
    }
    const pending = state.pendingSend;
    if (pending && event.code !== "no_active_turn") {
      // The message was refused (session busy, rate limited, too long...): take it back off the page
      // and give the text back, so nothing looks sent that was not.
      state.pendingSend = null;
      if (state.pendingBubble) state.pendingBubble.remove();
      if (!ui.input.value) ui.input.value = pending.content;
    }
    state.pendingBubble = null;
    updateComposer();
    toast(event.message || "The server reported an error.");
  }

  // ── user actions ───────────────────────────────────────────────────────────────────────────────

  function sendMessage() {
    const content = ui.input.value;
    if (!content.trim() || !state.session || isBusy()) return;
    const frame = {
      content,
      enable_thinking: ui.optThinking.checked,
      enable_tools: ui.optTools.checked,
      idempotency_key: uuid4(),
    };
    if (!sendFrame({ type: "message", ...frame })) {
      toast("Not connected yet. Please wait a moment.");
      return;
    }
    state.pendingSend = frame;
    state.pendingBubble = ui.messageList.appendChild(userBubble({ content }));
    ui.input.value = "";
    followBottom = true;
    ui.messages.scrollTop = ui.messages.scrollHeight;
    updateComposer();
  }

  function stopTurn() {
    if (isBusy()) sendFrame({ type: "cancel" });
  }

  async function createSession(event) {
    event.preventDefault();
    const body = {};
    if (ui.modelSelect.value) body.model = ui.modelSelect.value;
    try {
      const created = await api(`${API}/sessions`, { method: "POST", body });
      state.page = 1;
      state.q = "";
      ui.searchInput.value = "";
      await loadSessions();
      await openSession(created.id);
      ui.input.focus();
    } catch (err) {
      reportError(err);
    }
  }

  async function renameSession(event) {
    event.preventDefault();
    const title = ui.renameInput.value.trim();
    ui.renameDialog.close();
    if (!title || !state.session) return;
    try {
      await api(`${API}/sessions/${encodeURIComponent(state.session.id)}`, { method: "PATCH", body: { title } });
      await refreshSession();
      await loadSessions();
    } catch (err) {
      reportError(err);
    }
  }

  async function toggleSession() {
    const s = state.session;
    if (!s) return;
    try {
      if (s.status === "ended") {
        await api(`${API}/sessions/${encodeURIComponent(s.id)}/reopen`, { method: "POST" });
        await refreshSession();
        connect(s.id);
      } else {
        closeSocket();
        await api(`${API}/sessions/${encodeURIComponent(s.id)}`, { method: "DELETE" });
        await refreshSession();
      }
      await loadSessions();
    } catch (err) {
      reportError(err);
    }
  }

  async function deleteSession(event) {
    event.preventDefault();
    ui.confirmDialog.close();
    const s = state.session;
    if (!s) return;
    try {
      closeSocket();
      await api(`${API}/sessions/${encodeURIComponent(s.id)}?purge=true`, { method: "DELETE" });
      state.session = null;
      state.turn = null;
      history.replaceState(null, "", location.pathname);
      ui.messageList.replaceChildren();
      ui.emptyHint.hidden = false;
      ui.loadEarlier.hidden = true;
      renderHeader();
      updateComposer();
      await loadSessions();
      announce("Session deleted");
    } catch (err) {
      reportError(err);
    }
  }

  const EXPORT_EXT = { jsonl: "jsonl", markdown: "md", openclaw: "jsonl", openai: "jsonl" };

  async function exportSession(format) {
    const s = state.session;
    if (!s) return;
    try {
      const res = await api(`${API}/sessions/${encodeURIComponent(s.id)}/export?format=${format}`, { raw: true });
      const blob = await res.blob();
      const disposition = res.headers.get("Content-Disposition") || "";
      const named = /filename="?([^";]+)"?/.exec(disposition);
      const a = el("a");
      a.href = URL.createObjectURL(blob);
      a.download = named ? named[1] : `session-${s.id}-${format}.${EXPORT_EXT[format] || "txt"}`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (err) {
      reportError(err);
    }
  }

  // ── wiring ─────────────────────────────────────────────────────────────────────────────────────

  function wire() {
    ui.newSessionForm.addEventListener("submit", createSession);
    ui.searchForm.addEventListener("submit", (e) => e.preventDefault());
    let searchTimer = null;
    ui.searchInput.addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        state.q = ui.searchInput.value.trim();
        state.page = 1;
        loadSessions();
      }, 250);
    });
    ui.pagePrev.addEventListener("click", () => { state.page = Math.max(1, state.page - 1); loadSessions(); });
    ui.pageNext.addEventListener("click", () => { state.page = Math.min(state.pages, state.page + 1); loadSessions(); });

    ui.composer.addEventListener("submit", (e) => { e.preventDefault(); sendMessage(); });
    ui.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        sendMessage();
      }
    });
    ui.stop.addEventListener("click", stopTurn);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && isBusy() && !document.querySelector("dialog[open]")) {
        e.preventDefault();
        stopTurn();
      }
    });

    ui.loadEarlier.addEventListener("click", loadEarlier);
    ui.messages.addEventListener("scroll", onMessagesScroll, { passive: true });
    ui.rename.addEventListener("click", () => {
      if (!state.session) return;
      ui.renameInput.value = state.session.title || "";
      ui.renameDialog.showModal();
      ui.renameInput.select();
    });
    ui.renameForm.addEventListener("submit", renameSession);
    $("rename-cancel").addEventListener("click", () => ui.renameDialog.close());
    ui.toggle.addEventListener("click", toggleSession);
    ui.del.addEventListener("click", () => {
      if (!state.session) return;
      ui.confirmMessage.textContent =
        `“${state.session.title || "Untitled session"}” and all its messages will be deleted. This cannot be undone.`;
      ui.confirmDialog.showModal();
      $("confirm-cancel").focus();
    });
    ui.confirmForm.addEventListener("submit", deleteSession);
    $("confirm-cancel").addEventListener("click", () => ui.confirmDialog.close());
    for (const button of document.querySelectorAll("[data-export]")) {
      button.addEventListener("click", () => exportSession(button.dataset.export));
    }
    // The key dialog cannot be dismissed: without a key nothing works.
    ui.authDialog.addEventListener("cancel", (e) => e.preventDefault());

    $("sidebar-open").addEventListener("click", () => document.body.classList.add("sidebar-open"));
    $("sidebar-close").addEventListener("click", () => document.body.classList.remove("sidebar-open"));
    window.addEventListener("offline", () => { ui.banner.hidden = false; });
    window.addEventListener("online", () => {
      if (state.ws && state.ws.readyState === WebSocket.OPEN) ui.banner.hidden = true;
      else if (state.wsSessionId) connect(state.wsSessionId);
    });
  }

  async function start() {
    wire();
    updateComposer();
    await loadModels(); // first: session rows label demo models
    await loadSessions();
    const fromHash = decodeURIComponent(location.hash.slice(1));
    if (fromHash) await openSession(fromHash);
  }

  start();
})();
