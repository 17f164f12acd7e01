"""Identifiers that come from outside and may name rows or files: session ids and agent ids.

One place decides what a valid id is, for the API, the engine, prompts and exports alike:
- a session id is a canonical UUID (8-4-4-4-12 hex); anything else (`urn:uuid:`, braces, bare hex, path
  tricks) cannot name a session, so it is `SessionNotFound` like any unknown id;
- an agent id is a slug (a letter or digit, then up to 63 letters, digits, `_`, `-`), so it is safe as a
  file or directory name: no separator, no dot, no `..`.
"""

from __future__ import annotations

import re
import uuid

from aria_engine.exceptions import SessionNotFound, ValidationError

__all__ = ["is_safe_agent_id", "parse_session_id", "validate_agent_id"]

_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def parse_session_id(value: str | uuid.UUID) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str) or not _CANONICAL_UUID.fullmatch(value):
        raise SessionNotFound()
    return uuid.UUID(value)


def is_safe_agent_id(agent_id: str) -> bool:
    return isinstance(agent_id, str) and _AGENT_ID.fullmatch(agent_id) is not None


def validate_agent_id(agent_id: str) -> str:
    if not is_safe_agent_id(agent_id):
        raise ValidationError(
            "agent_id must be 1-64 letters, digits, '_' or '-', starting with a letter or digit."
        )
    return agent_id
