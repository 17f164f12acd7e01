"""What machine and which versions a result was measured on (cores, CPU, memory, load, packages)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "machine_name"]

_PACKAGES = (
    "aria-engine",
    "fastapi",
    "starlette",
    "uvicorn",
    "websockets",
    "aiohttp",
    "httpx",
    "openai",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "orjson",
    "uvloop",
    "httptools",
    "pydantic",
)


def machine_name() -> str:
    return socket.gethostname().split(".")[0] or "machine"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _uncommitted(repo: Path) -> list[str]:
    """Engine files that differ from the commit: the server runs what is on disk, not what is committed."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "aria_engine", "src", "migrations", "models.yaml"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return [line[3:] for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(repo: Path) -> dict[str, Any]:
    """Cores, CPU model, memory, load average at the start, OS, Python and package versions."""
    return {
        "name": machine_name(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "git_commit": _git_commit(repo),
        "uncommitted_engine_files": _uncommitted(repo),
        "packages": {name: _version(name) for name in _PACKAGES},
    }
