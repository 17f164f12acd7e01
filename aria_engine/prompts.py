"""PromptAssembler: the system prompt of each LLM call (SPEC section 7).

A session's own `system_prompt` (the caller's override) is used exactly as given. Otherwise the prompt is
assembled per turn from sections, stable parts first so a provider's prefix cache keeps hitting:

1. the agent's instructions, read from `<prompts_dir>/<agent_id>.md` (a default when there is none);
2. the names of the tools offered on this call;
3. the current date and time in UTC, at minute resolution (so the text, and our cache, change once a
   minute, not on every call).

File safety: an agent id is a slug (`is_safe_agent_id`), so it can never name a path outside
`prompts_dir`; the file is opened with O_NOFOLLOW (a symlink is refused, with no check-then-open race) and
must be a regular file of bounded size. Reads are cached by (inode, mtime, size), so an edited file takes
effect on the next turn and an unchanged one is not re-read.

Both caches are bounded LRUs; the assembled prompt is keyed by a hash of its sections.

Usage:
    assembler = PromptAssembler(config)
    system = assembler.build(agent_id="main", override=None, tool_schemas=registry.schemas("main"))
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aria_engine.ids import is_safe_agent_id

if TYPE_CHECKING:
    from aria_engine.config import EngineConfig

__all__ = ["DEFAULT_INSTRUCTIONS", "MAX_PROMPT_FILE_BYTES", "PromptAssembler", "is_safe_agent_id"]

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTIONS = (
    "You are Aria, a helpful assistant. Answer clearly and accurately, say so when you are unsure, "
    "and use the available tools when they help."
)
MAX_PROMPT_FILE_BYTES = 256 * 1024
_CACHE_SIZE = 256
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class _LRU:
    """A small bounded LRU map (the style guide forbids unbounded caches)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class PromptAssembler:
    """Builds the system prompt for one LLM call.

    Parameters:
    - config: `prompts_dir` (may be None: every agent then gets `DEFAULT_INSTRUCTIONS`).
    """

    def __init__(self, config: EngineConfig) -> None:
        self._dir = config.prompts_dir.resolve() if config.prompts_dir is not None else None
        self._files = _LRU(_CACHE_SIZE)  # agent_id -> ((ino, mtime_ns, size), text)
        self._prompts = _LRU(_CACHE_SIZE)  # sha256 of the sections -> assembled prompt

    def build(
        self,
        *,
        agent_id: str,
        override: str | None,
        tool_schemas: list[dict[str, Any]],
        now: datetime | None = None,
    ) -> str:
        """The system prompt: `override` exactly when it has text, else the assembled sections."""
        if override is not None and override.strip():
            return override
        sections = (
            self.instructions(agent_id),
            _tools_section(tool_schemas),
            _time_section(now or datetime.now(UTC)),
        )
        key = hashlib.sha256("\x00".join(sections).encode()).digest()
        cached: str | None = self._prompts.get(key)
        if cached is None:
            cached = "\n\n".join(section for section in sections if section)
            self._prompts.put(key, cached)
        return cached

    def instructions(self, agent_id: str) -> str:
        """The agent's instructions from its prompt file, or `DEFAULT_INSTRUCTIONS`."""
        if self._dir is None:
            return DEFAULT_INSTRUCTIONS
        if not is_safe_agent_id(agent_id):
            # Never reaches the file system; the id is not echoed into the log unescaped.
            logger.warning("agent id %r is not a safe name; using the default instructions", agent_id)
            return DEFAULT_INSTRUCTIONS
        text = self._read(self._dir / f"{agent_id}.md", agent_id)
        return text if text else DEFAULT_INSTRUCTIONS

    def _read(self, path: Path, agent_id: str) -> str | None:
        try:
            # O_NONBLOCK: opening a FIFO planted under the name must not hang the event loop (a regular
            # file ignores the flag); fstat below then refuses anything that is not a regular file.
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError:
            # ELOOP: the file is a symlink (refused); EACCES and friends: unreadable. Same answer.
            logger.warning("prompt file for agent %r is a symlink or unreadable; using the default", agent_id)
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_PROMPT_FILE_BYTES:
                logger.warning("prompt file for agent %r is not a regular file or too large", agent_id)
                return None
            version = (info.st_ino, info.st_mtime_ns, info.st_size)
            cached = self._files.get(agent_id)
            if cached is not None and cached[0] == version:
                return str(cached[1])
            with os.fdopen(fd, "rb", closefd=False) as handle:
                raw = handle.read(MAX_PROMPT_FILE_BYTES + 1)
        finally:
            os.close(fd)
        text = raw.decode("utf-8", errors="replace").strip()
        self._files.put(agent_id, (version, text))
        return text


def _tools_section(tool_schemas: list[dict[str, Any]]) -> str:
    names = [str(schema.get("function", {}).get("name", "")) for schema in tool_schemas]
    names = [name for name in names if name]
    if not names:
        return ""
    return "Available tools: " + ", ".join(names) + "."


def _time_section(now: datetime) -> str:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)  # a naive time is taken to be UTC
    now = now.astimezone(UTC).replace(second=0, microsecond=0)
    return f"Current date and time: {now:%Y-%m-%d %H:%M} UTC ({now:%A})."
