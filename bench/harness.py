"""The benchmark run: one fake provider for the whole run, engines per database backend, the relay, the
load generators, and a sampler for a server's RSS and CPU.

    with Bench(sizes, work_dir) as bench:
        with bench.engine("postgres") as engine:
            sid = engine.create_session()
            measured = bench.turns(bench.ws_job([engine.ws_url(sid)], turns=10))

The engine runs the way a user runs it, `aria-engine serve` under uvicorn with one worker, configured
only through its environment (the ARIA_LLM_* shortcut points it at the fake provider; rate limits are off
so the benchmark measures the engine, not the limiter). Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.database import BenchDatabase, session_owner
from bench.loadrun import merge_turns, run_loadgens, split_urls
from bench.procs import Service, free_port
from bench.provider import MODEL
from bench.settings import Sizes

__all__ = ["ALT_RELAY_WS", "API", "RELAY_WS", "Bench", "EngineHandle", "Sampler"]

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
API = "/api/engine/chat"


def _engine_ws_implementation() -> str:
    """The uvicorn WebSocket implementation `aria-engine serve` uses (from the app's own options)."""
    sys.path.insert(0, str(REPO / "src" / "api"))
    from main import uvicorn_options  # the FastAPI app dir, as `aria-engine serve` loads it

    from aria_engine.config import EngineConfig

    return str(uvicorn_options(EngineConfig(_env_file=None))["ws"])  # type: ignore[call-arg]


# The relay serves with the engine's WebSocket implementation; the other one is measured for reference.
RELAY_WS = _engine_ws_implementation()
ALT_RELAY_WS = "websockets" if RELAY_WS != "websockets" else "websockets-sansio"


def _clean_env(**extra: str) -> dict[str, str]:
    """The parent's environment without any engine setting, plus `extra` (a run is not shaped by .env)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ARIA_", "LITELLM_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(extra)
    return env


@dataclass
class EngineHandle:
    """A running engine on one database backend."""

    backend: str
    service: Service
    database: BenchDatabase
    owner: str = ""
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=120.0))

    @property
    def base_url(self) -> str:
        return self.service.base_url

    def ws_url(self, session_id: str) -> str:
        return f"ws://127.0.0.1:{self.service.port}/ws/chat/{session_id}"

    def create_session(self, **body: Any) -> str:
        response = self.client.post(self.base_url + API + "/sessions", json=body)
        response.raise_for_status()
        session_id: str = response.json()["id"]
        if not self.owner:
            self.owner = session_owner(self.database.url, session_id)
        return session_id

    def create_sessions(self, count: int) -> list[str]:
        return [self.create_session() for _ in range(count)]

    def send(self, session_id: str, content: str = "hello") -> dict[str, Any]:
        response = self.client.post(
            f"{self.base_url}{API}/sessions/{session_id}/messages", json={"content": content}
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


class Sampler:
    """Samples a service's RSS (bytes) and cumulative CPU seconds every `period` seconds in a thread."""

    def __init__(self, service: Service, period: float) -> None:
        self.service, self.period = service, period
        self.samples: list[tuple[float, int, float]] = []  # (monotonic time, rss, cpu seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.service.rss(), self.service.cpu()))
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # never entered when the load failed before its release
            self._thread.join()
        self.samples.append((time.perf_counter(), self.service.rss(), self.service.cpu()))

    def peak_rss(self) -> int:
        return max(rss for _, rss, _ in self.samples)

    def cpu_cores(self) -> float:
        """Average cores used between the first and the last sample."""
        (t0, _, c0), (t1, _, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def cpu_seconds(self) -> float:
        """CPU seconds used between the first and the last sample."""
        return self.samples[-1][2] - self.samples[0][2]


class Bench:
    """One benchmark run: owns the work directory, the provider process and every process it starts."""

    def __init__(self, sizes: Sizes, work_dir: Path) -> None:
        self.sizes = sizes
        self.work_dir = work_dir
        self.provider = Service(
            "provider",
            [sys.executable, "-m", "bench.provider", "--port", "{port}"],
            port=0,
            log_path=work_dir / "provider.log",
            cwd=REPO,
        )
        self.database_versions: dict[str, str] = {}
        self.profile = False  # sample servers with py-spy during the busiest measurements
        self.profiles: dict[str, Any] = {}
        self.profile_target: Service | None = None

    # -- the fake provider -------------------------------------------------------------------------
    def __enter__(self) -> Bench:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.start_service(self.provider)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.provider.stop()

    def start_service(self, service: Service, timeout: float = 60.0) -> None:
        service.port = free_port()
        service.argv = [arg.replace("{port}", str(service.port)) for arg in service.argv]
        service.start(timeout)

    @property
    def provider_v1(self) -> str:
        return self.provider.base_url + "/v1"

    def configure_provider(self, tokens: int, delay: float = 0.0, first_delay: float = 0.0) -> None:
        body = {"tokens": tokens, "delay": delay, "first_delay": first_delay}
        httpx.post(self.provider.base_url + "/_bench/config", json=body, timeout=10).raise_for_status()

    # -- servers -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def engine(self, backend: str, wrapper: Sequence[str] = ()) -> Iterator[EngineHandle]:
        """The engine on a fresh database of `backend`; the database is dropped afterwards. `wrapper`
        runs it under another program (valgrind: `bench/instructions.py`), which may start slowly."""
        database = BenchDatabase(backend, sqlite_dir=self.work_dir / "sqlite")
        url = database.create()
        self.database_versions[backend] = database.server_version()
        env = _clean_env(
            DATABASE_URL=url,
            ARIA_LLM_BASE_URL=self.provider_v1,
            ARIA_LLM_MODEL=MODEL,
            ARIA_LLM_API_KEY="bench-key",
            ARIA_DATA_DIR=str(self.work_dir / f"engine-{backend}"),
            ARIA_LOG_LEVEL="WARNING",
            ARIA_RATE_LIMIT_REQUESTS_PER_MINUTE="0",
            ARIA_RATE_LIMIT_TOKENS_PER_MINUTE="0",
        )
        service = Service(
            f"engine-{backend}",
            [*wrapper, str(VENV_BIN / "aria-engine"), "serve", "--port", "{port}"],
            port=0,
            log_path=self.work_dir / f"engine-{backend}.log",
            env=env,
            cwd=self.work_dir,
        )
        try:
            self.start_service(service, timeout=900.0 if wrapper else 120.0)
            handle = EngineHandle(backend, service, database)
            yield handle
            handle.client.close()
        finally:
            service.stop()
            database.drop()

    @contextlib.contextmanager
    def relay(self, ws: str = RELAY_WS, wrapper: Sequence[str] = ()) -> Iterator[Service]:
        """The bare relay, by default on the engine's WebSocket implementation (`wrapper`: as `engine`)."""
        service = Service(
            f"relay-{ws}",
            [
                *wrapper,
                sys.executable,
                "-m",
                "bench.relay",
                "--port",
                "{port}",
                "--provider",
                self.provider_v1,
                "--ws",
                ws,
            ],
            port=0,
            log_path=self.work_dir / f"relay-{ws}.log",
            cwd=REPO,
        )
        self.start_service(service, timeout=900.0 if wrapper else 60.0)
        try:
            yield service
        finally:
            service.stop()

    # -- load ----------------------------------------------------------------------------------------
    def load(
        self, jobs: list[dict[str, Any]], on_ready: Callable[[], None] | None = None
    ) -> list[dict[str, Any]]:
        # A job that runs for a set time (the soak: 30 minutes in full mode) gets that time on top of the
        # usual allowance; a fixed 1,800 s limit ended the full soak exactly at its own length.
        longest = max((float(job.get("duration") or 0) for job in jobs), default=0.0)
        return run_loadgens(
            jobs, self.work_dir / "loadgen.log", on_ready=on_ready, timeout=1800.0 + longest
        )

    def turns(
        self, job: dict[str, Any], processes: int = 1, on_ready: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """Run a `ws_turns`/`sse_turns` job (split over processes) and merge what they measured."""
        return merge_turns(self.load(split_urls(job, processes), on_ready))

    def sse_job(self, url: str, streams: int = 1, turns: int = 1, **extra: Any) -> dict[str, Any]:
        return {"kind": "sse_turns", "url": url, "streams": streams, "turns": turns, "model": MODEL} | extra

    @staticmethod
    def ws_job(urls: list[str], turns: int = 1, **extra: Any) -> dict[str, Any]:
        return {"kind": "ws_turns", "urls": urls, "turns": turns} | extra
