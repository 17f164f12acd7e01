"""Test and benchmark helpers that ship with the engine: the fake OpenAI-compatible provider.

Nothing in the engine imports this package; tests, `bench/` and `aria-engine fake-llm` do.
"""

from aria_engine.testing.fake_llm import (
    DEFAULT_TEXT,
    FAKE_MODELS,
    Drop,
    FakeLLM,
    HTTPError,
    Malformed,
    Reply,
    Stall,
    ToolCall,
    Usage,
    write_fake_catalog,
)

__all__ = [
    "DEFAULT_TEXT",
    "FAKE_MODELS",
    "Drop",
    "FakeLLM",
    "HTTPError",
    "Malformed",
    "Reply",
    "Stall",
    "ToolCall",
    "Usage",
    "write_fake_catalog",
]
