"""Load generator: runs in its own process, reads one JSON job on stdin, writes one JSON result file.

    echo '{"kind": "ws_turns", "result_path": "/tmp/r.json", ...}' | python -m bench.loadgen

Job kinds:
- `ws_turns`: one WebSocket per URL, `turns` sequential turns each (`{"type": "message"}` -> frames up
  to `done`). Per turn: time to the first token, total time, tokens, bytes on the wire (frame payload +
  RFC 6455 header; compression is off), and optionally every gap between two tokens.
- `sse_turns`: the same measurements for an OpenAI-compatible SSE endpoint (the provider directly, or
  LiteLLM's proxy); bytes are the HTTP body bytes.
- `http`: closed-loop requests from `concurrency` workers (each with its own request template) for a
  warm-up and then a measured window; latencies of the requests that start and end inside the window.
- `soak`: create a session, stream one turn over WebSocket, delete it (`?purge=true`), in a loop.

A job with `"phased": true` connects first, prints `{"event": "ready"}` and waits for a line on stdin
before it starts, so the orchestrator can measure the server with idle connections. All times are
`time.perf_counter()` (CLOCK_MONOTONIC, shared by all processes of the machine), so results from several
load-generator processes merge on one clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection, connect

__all__ = ["run_job"]

Job = dict[str, Any]


def _frame_bytes(payload: bytes) -> int:
    """Bytes of an unmasked server frame: payload plus the RFC 6455 header for its length."""
    size = len(payload)
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


class _TurnRecorder:
    """Collects per-turn measurements in flat lists (cheap to serialize, merged by the orchestrator)."""

    def __init__(self, record_gaps: bool) -> None:
        self.record_gaps = record_gaps
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.tokens: list[int] = []
        self.bytes: list[int] = []
        self.gaps: list[float] = []
        self.gap_ends: list[float] = []  # when each gap ended: the arrival of its second token
        # Each turn's first and last token, side by side: when streams ran, and how many at once.
        self.first_tokens: list[float] = []
        self.last_tokens: list[float] = []
        self.errors = 0
        self.error_sample = ""
        self.first_send = float("inf")
        self.last_done = 0.0

    def add(self, sent: float, arrivals: list[float], done: float, size: int) -> None:
        self.first_send = min(self.first_send, sent)
        self.last_done = max(self.last_done, done)
        self.total.append(done - sent)
        self.tokens.append(len(arrivals))
        self.bytes.append(size)
        if arrivals:
            self.ttft.append(arrivals[0] - sent)
            self.first_tokens.append(arrivals[0])
            self.last_tokens.append(arrivals[-1])
            if self.record_gaps:
                self.gaps.extend(b - a for a, b in itertools.pairwise(arrivals))
                self.gap_ends.extend(arrivals[1:])

    def fail(self, message: str) -> None:
        self.errors += 1
        self.error_sample = self.error_sample or message[:300]

    def result(self) -> dict[str, Any]:
        return {
            "ttft": self.ttft,
            "total": self.total,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "gaps": self.gaps,
            "gap_ends": self.gap_ends,
            "first_tokens": self.first_tokens,
            "last_tokens": self.last_tokens,
            "errors": self.errors,
            "error_sample": self.error_sample,
            "first_send": self.first_send if self.total else None,
            "last_done": self.last_done if self.total else None,
        }


_TOKEN_PREFIX = b'{"type":"token"'


async def _ws_turn(ws: ClientConnection, content: str, rec: _TurnRecorder) -> None:
    """One turn: send a message, read frames up to `done` (or an error refusing the turn)."""
    request = orjson.dumps({"type": "message", "content": content}).decode()
    arrivals: list[float] = []
    size = 0
    started = False
    sent = time.perf_counter()
    await ws.send(request)
    while True:
        raw = await ws.recv(decode=False)
        now = time.perf_counter()
        assert isinstance(raw, bytes)
        size += _frame_bytes(raw)
        # Token frames are most of the traffic and both servers put "type" first: skip their parsing,
        # so the client spends less of the shared CPU.
        if raw.startswith(_TOKEN_PREFIX):
            arrivals.append(now)
            continue
        event = orjson.loads(raw)
        kind = event.get("type")
        if kind == "token":
            arrivals.append(now)
        elif kind == "start":
            started = True
        elif kind == "error":
            rec.fail(f"error event: {event.get('code')}: {event.get('message')}")
            if not started:
                return  # refused before it started (busy, ended, ...): no `done` follows
        elif kind == "done":
            rec.add(sent, arrivals, now, size)
            return


async def _gate(job: Job, connected: int) -> None:
    """In a phased job, report readiness and wait for the orchestrator's go."""
    if not job.get("phased"):
        return
    sys.stdout.write(orjson.dumps({"event": "ready", "connected": connected}).decode() + "\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _ws_turns(job: Job) -> dict[str, Any]:
    rec = _TurnRecorder(bool(job.get("record_gaps")))
    urls: list[str] = job["urls"]
    opening = asyncio.Semaphore(int(job.get("connect_concurrency", 64)))

    async def open_one(url: str) -> ClientConnection | None:
        async with opening:
            try:
                return await connect(
                    url, compression=None, max_size=None, ping_interval=None, open_timeout=60
                )
            except (OSError, TimeoutError, Exception) as exc:  # any failure to connect is one error
                rec.fail(f"connect: {type(exc).__name__}: {exc}")
                return None

    sockets = await asyncio.gather(*(open_one(url) for url in urls))
    live = [ws for ws in sockets if ws is not None]
    await _gate(job, len(live))
    ramp = float(job.get("ramp", 0.0))

    async def drive(index: int, ws: ClientConnection) -> None:
        if ramp:
            await asyncio.sleep(ramp * index / max(len(live), 1))
        try:
            for _ in range(int(job.get("warmup", 0))):
                await _ws_turn(ws, job.get("content", "hello"), _TurnRecorder(False))
            for _ in range(int(job.get("turns", 1))):
                await _ws_turn(ws, job.get("content", "hello"), rec)
        except Exception as exc:  # a dropped connection ends this client, and is counted
            rec.fail(f"turn: {type(exc).__name__}: {exc}")

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(drive(i, ws) for i, ws in enumerate(live)))
    elapsed = time.perf_counter() - started
    cores = (time.process_time() - cpu_started) / elapsed if elapsed else 0.0
    await asyncio.gather(*(ws.close() for ws in live), return_exceptions=True)
    return rec.result() | {"elapsed": elapsed, "connections": len(live), "client_cores": cores}


def _sse_tokens(buffer: bytearray, arrivals: list[float], now: float) -> bytearray:
    """Consume the complete SSE events in `buffer`; note an arrival for each content delta."""
    *events, rest = bytes(buffer).split(b"\n\n")
    for event in events:
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            continue
        choices = orjson.loads(event[6:]).get("choices") or ()
        if choices and (choices[0].get("delta") or {}).get("content"):
            arrivals.append(now)
    return bytearray(rest)


async def _sse_turn(client: aiohttp.ClientSession, job: Job, rec: _TurnRecorder) -> None:
    body = {
        "model": job.get("model", "bench-model"),
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": job.get("content", "hello")}],
    }
    arrivals: list[float] = []
    size = 0
    buffer = bytearray()
    sent = time.perf_counter()
    async with client.post(job["url"], data=orjson.dumps(body), headers=job.get("headers")) as response:
        if response.status != 200:
            rec.fail(f"HTTP {response.status}: {(await response.read())[:200]!r}")
            return
        async for raw in response.content.iter_any():
            now = time.perf_counter()
            size += len(raw)
            buffer += raw
            buffer = _sse_tokens(buffer, arrivals, now)
    rec.add(sent, arrivals, time.perf_counter(), size)


async def _sse_turns(job: Job) -> dict[str, Any]:
    """aiohttp, not httpx, reads the streams: it costs this shared machine about a quarter of the CPU
    per chunk (bench/bench_provider_clients.py), so the floor it measures is the provider's, not ours."""
    rec = _TurnRecorder(bool(job.get("record_gaps")))
    streams = int(job.get("streams", 1))
    connector = aiohttp.TCPConnector(limit=streams, limit_per_host=0)
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=600.0)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as client:
        await _gate(job, streams)
        ramp = float(job.get("ramp", 0.0))

        async def drive(index: int) -> None:
            if ramp:
                await asyncio.sleep(ramp * index / streams)
            try:
                for _ in range(int(job.get("warmup", 0))):
                    await _sse_turn(client, job, _TurnRecorder(False))
                for _ in range(int(job.get("turns", 1))):
                    await _sse_turn(client, job, rec)
            except Exception as exc:  # a failed stream is counted, the others go on
                rec.fail(f"stream: {type(exc).__name__}: {exc}")

        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(drive(i) for i in range(streams)))
        elapsed = time.perf_counter() - started
        cores = (time.process_time() - cpu_started) / elapsed if elapsed else 0.0
    return rec.result() | {"elapsed": elapsed, "connections": streams, "client_cores": cores}


async def _http(job: Job) -> dict[str, Any]:
    """Closed loop: each worker sends its request again as soon as the previous answer is read.

    With `duration`, requests that complete inside a steady-state window count (`_timed_window`); with
    `requests`, each worker sends `warmup` unrecorded requests and then exactly `requests` recorded ones.
    """
    templates: list[dict[str, Any]] = job["workers"]
    counted = job.get("requests")
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    # aiohttp, as for SSE: httpx's pool costs more CPU per request as it grows (at 64 connections its
    # client took the CPU the servers under test needed, and every server looked slower at 64 than at 16).
    connector = aiohttp.TCPConnector(limit=len(templates), limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=120.0)
    base_url = job["base_url"].rstrip("/")
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def one(template: dict[str, Any]) -> tuple[float, float, int] | None:
            started = time.perf_counter()
            method, url = template.get("method", "GET"), base_url + template["path"]
            try:
                async with client.request(method, url, json=template.get("json")) as response:
                    text = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return None
            if status >= 400 and len(errors) < 5:
                errors.append(f"HTTP {status}: {text[:200]!r}")
            return started, time.perf_counter(), status

        def record(outcome: tuple[float, float, int] | None) -> None:
            if outcome is not None:
                key = str(outcome[2])
                statuses[key] = statuses.get(key, 0) + 1
                latencies.append(outcome[1] - outcome[0])

        if counted is not None:

            async def counted_worker(template: dict[str, Any]) -> None:
                for _ in range(int(job.get("warmup", 0))):
                    await one(template)
                for _ in range(int(counted)):
                    record(await one(template))

            started = time.perf_counter()
            await asyncio.gather(*(counted_worker(t) for t in templates))
            duration = time.perf_counter() - started
        else:
            duration, outcomes = await _timed_window(job, templates, one)
            for outcome in outcomes:
                record(outcome)
    ok = sum(n for code, n in statuses.items() if code.startswith("2"))
    return {
        "latencies": latencies,
        "statuses": statuses,
        "ok": ok,
        "duration": duration,
        "rps": ok / duration if duration else 0.0,
        "errors": len(errors),
        "error_sample": errors[:3],
    }


# A slow server must still be measured in steady state: the window waits for every client's first answer
# and lasts until each client completed about two requests, within these caps (seconds).
_MAX_WARMUP = 30.0
_MAX_WINDOW = 30.0


async def _timed_window(
    job: Job, templates: list[dict[str, Any]], one: Any
) -> tuple[float, list[tuple[float, float, int]]]:
    """Closed-loop clients measured over a window in steady state; returns (window, counted outcomes).

    The window opens after the warm-up and after every client has had one answer (so a slow server
    is not measured on its first, synchronized burst); it closes after `duration`, or later if fewer
    than two completions per client fell inside it.
    """
    started = time.perf_counter()
    answered: set[int] = set()
    all_answered = asyncio.Event()
    done: list[tuple[float, float, int]] = []
    stop = asyncio.Event()

    async def worker(index: int, template: dict[str, Any]) -> None:
        while not stop.is_set():
            outcome = await one(template)
            if outcome is not None:
                done.append(outcome)
                answered.add(index)
                if len(answered) == len(templates):
                    all_answered.set()

    async def control() -> tuple[float, float]:
        await asyncio.sleep(float(job.get("warmup", 1.0)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_answered.wait(), max(0.0, started + _MAX_WARMUP - time.perf_counter()))
        begin = time.perf_counter()
        minimum = begin + float(job["duration"])
        while time.perf_counter() < begin + _MAX_WINDOW:
            now = time.perf_counter()
            if now >= minimum and sum(1 for o in done if o[1] >= begin) >= 2 * len(templates):
                break
            await asyncio.sleep(0.05)
        end = time.perf_counter()
        stop.set()
        return begin, end

    workers = [asyncio.create_task(worker(i, t)) for i, t in enumerate(templates)]
    begin, end = await control()
    await asyncio.gather(*workers)
    # A request counts when it completes inside the window (throughput = completions per second).
    return end - begin, [o for o in done if begin <= o[1] <= end]


async def _soak(job: Job) -> dict[str, Any]:
    """Create/stream/delete cycles from `workers` clients until `duration` has passed."""
    end = time.perf_counter() + float(job["duration"])
    rec = _TurnRecorder(False)
    cycles = 0
    sessions_url = job["base_url"].rstrip("/") + job["create_path"]
    timeout = aiohttp.ClientTimeout(total=120.0)
    async with aiohttp.ClientSession(timeout=timeout, raise_for_status=True) as client:

        async def worker() -> None:
            nonlocal cycles
            while time.perf_counter() < end:
                try:
                    async with client.post(sessions_url, json={}) as created:
                        session_id = (await created.json())["id"]
                    async with connect(
                        job["ws_base"] + session_id, compression=None, max_size=None, ping_interval=None
                    ) as ws:
                        await _ws_turn(ws, job.get("content", "hello"), rec)
                    async with client.delete(f"{sessions_url}/{session_id}?purge=true"):
                        pass
                    cycles += 1
                except Exception as exc:  # one failed cycle is counted; the soak goes on
                    rec.fail(f"cycle: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(worker() for _ in range(int(job.get("workers", 4)))))
    result = rec.result()
    return {
        "cycles": cycles,
        "errors": result["errors"],
        "error_sample": result["error_sample"],
        "total": result["total"],
    }


_KINDS = {"ws_turns": _ws_turns, "sse_turns": _sse_turns, "http": _http, "soak": _soak}


async def run_job(job: Job) -> dict[str, Any]:
    return await _KINDS[job["kind"]](job)


def main() -> None:
    job = orjson.loads(sys.stdin.readline())
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # the plain loop measures the same things, a little slower
        runner = asyncio.run
    result = runner(run_job(job))
    # A file, not stdout: results reach megabytes (every token gap), more than a pipe should carry.
    Path(job["result_path"]).write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
