"""The library's public surface: the seed's names import, and the library never imports FastAPI."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from aria_engine.config import REPO_ROOT


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_seed_names_import_from_the_library() -> None:
    result = _run(
        """
        from aria_engine.config import EngineConfig
        from aria_engine.chat_engine import ChatEngine, ChatResponse
        from aria_engine.context_manager import ContextManager
        from aria_engine.export import export_session
        from aria_engine.prompts import PromptAssembler
        from aria_engine.streaming import StreamManager
        from aria_engine.exceptions import SessionError, LLMError
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_library_does_not_import_fastapi_at_runtime() -> None:
    result = _run(
        """
        import importlib, pkgutil, sys
        import aria_engine
        skip = {"aria_engine.__main__"}
        for info in pkgutil.walk_packages(aria_engine.__path__, "aria_engine."):
            if info.name not in skip:
                importlib.import_module(info.name)
        print("fastapi" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
