"""LiteLLM's proxy as a peer: its own virtualenv (`bench/.venv-litellm`, gitignored), offline settings,
pointed at the benchmark's fake provider.

The version is pinned: LiteLLM releases 1.82.7 and 1.82.8 (March 2026) and 1.107.0 were compromised on
PyPI and withdrawn, and releases from 1.108 on declare their `proxy` extra through a `litellm-proxy`
package that the index does not serve. 1.82.6 is the last release before the first compromise.

Offline: the model price map is read from the installed package (LITELLM_LOCAL_MODEL_COST_MAP), telemetry
is off, there is no database (so no persistence, unlike the engine) and no master key. Its uvicorn access
log is set to WARNING like the engine's, so neither server pays for per-request log lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.procs import Service
from bench.provider import MODEL

__all__ = ["LITELLM_REQUIREMENT", "VENV", "ensure_venv", "litellm_service", "litellm_version"]

LITELLM_REQUIREMENT = "litellm[proxy]==1.82.6"
VENV = Path(__file__).resolve().parent / ".venv-litellm"
_STAMP = VENV / ".installed"


def ensure_venv(install: bool = True) -> str | None:
    """Create and fill the virtualenv if needed. Returns None when ready, else why it is not."""
    if _STAMP.exists() and _STAMP.read_text().strip() == LITELLM_REQUIREMENT:
        return None
    if not install:
        return f"{VENV} is not set up and --no-litellm-install was given"
    try:
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", LITELLM_REQUIREMENT]
        done = subprocess.run(pip, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not create {VENV}: {type(exc).__name__}: {exc}"
    if done.returncode != 0:
        tail = " | ".join(line for line in done.stderr.splitlines()[-3:] if "Location" not in line)
        return f"pip install {LITELLM_REQUIREMENT} failed: {tail}"
    _STAMP.write_text(LITELLM_REQUIREMENT + "\n")
    return None


def litellm_version() -> str:
    try:
        out = subprocess.run(
            [
                str(VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _write_config(work_dir: Path, provider_v1: str) -> tuple[Path, Path]:
    config = work_dir / "litellm-config.yaml"
    # JSON is valid YAML: no YAML writer is needed here.
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": provider_v1,
                            "api_key": "bench-key",
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False, "set_verbose": False, "request_timeout": 600},
            },
            indent=2,
        )
    )
    log_config = work_dir / "litellm-logging.json"
    quiet = {"level": "WARNING", "handlers": ["default"], "propagate": False}
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"default": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
                "loggers": {"uvicorn": quiet, "uvicorn.error": quiet, "uvicorn.access": quiet},
            }
        )
    )
    return config, log_config


def litellm_service(work_dir: Path, provider_v1: str) -> Service:
    config, log_config = _write_config(work_dir, provider_v1)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith(("ARIA_", "LITELLM_"))
    }
    env |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    argv = [
        str(VENV / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--num_workers",
        "1",
        "--log_config",
        str(log_config),
    ]
    return Service(
        "litellm",
        argv,
        port=0,
        log_path=work_dir / "litellm.log",
        env=env,
        health_path="/health/liveliness",
        cwd=work_dir,
    )
