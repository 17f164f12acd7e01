"""models.yaml: loading, `${VAR}` interpolation, validation errors that name the line, and the shortcut."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from aria_engine.catalog import load_catalog, parse_catalog
from aria_engine.config import EngineConfig
from aria_engine.exceptions import ConfigError
from aria_engine.llm_gateway import LLMGateway
from aria_engine.testing.fake_llm import FakeLLM, Reply

REPO_ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """\
providers:
  p:
    kind: openai
    base_url: http://127.0.0.1:9/v1
models:
  m:
    provider: p
    context_window: 1000
"""


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_catalog(text, source="models.yaml", env=env or {})
    return caught.value.message


def test_the_shipped_catalog_loads_without_any_keys() -> None:
    catalog = load_catalog(REPO_ROOT / "models.yaml", env={})
    assert {"smollm2", "gpt-4o-mini", "ollama-llama3.2", "vllm-qwen3", "llamacpp"} <= set(catalog.models)
    assert catalog.providers["ollama"].missing_env == ("OLLAMA_BASE_URL",)
    assert catalog.providers["openai"].base_url == "https://api.openai.com/v1"  # ${VAR:-default}
    assert catalog.models["gpt-4o-mini"].price.input == Decimal("0.15")  # exact, not a float
    assert catalog.models["smollm2"].demo


def test_providers_without_their_key_are_listed_as_unavailable(tmp_path: Path) -> None:
    gateway = LLMGateway.from_config(EngineConfig(models_path=REPO_ROOT / "models.yaml"), env={})
    models = {m.id: m for m in gateway.list_models()}
    assert not models["gpt-4o-mini"].available
    assert models["gpt-4o-mini"].unavailable_reason == "OPENAI_API_KEY not set"
    assert models["ollama-llama3.2"].unavailable_reason == "OLLAMA_BASE_URL not set"


def test_a_configured_provider_becomes_available_and_the_default() -> None:
    env = {"OPENAI_API_KEY": "sk-test"}
    gateway = LLMGateway.from_config(EngineConfig(models_path=REPO_ROOT / "models.yaml"), env=env)
    assert gateway.resolve("gpt-4o-mini").available
    assert gateway.default_model == "gpt-4o-mini"


def test_interpolation_reads_the_environment() -> None:
    text = MINIMAL.replace("http://127.0.0.1:9/v1", "${HOST_URL}/v1")
    catalog = parse_catalog(text, env={"HOST_URL": "http://gpu-box:8000"})
    assert catalog.providers["p"].base_url == "http://gpu-box:8000/v1"
    assert catalog.providers["p"].missing_env == ()


def test_unset_variable_outside_providers_is_an_error() -> None:
    text = MINIMAL.replace("context_window: 1000", "context_window: 1000\n    description: ${NOPE}")
    assert error_of(text) == "models.yaml:line 6: models: environment variable NOPE is not set"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("context_window: 1000", "context_window: -5"), "models.yaml:line 8: models.m.context_window:"),
        (("context_window: 1000", "context_windw: 1000"), "models.yaml:line 8: models.m.context_windw:"),
        (("kind: openai", "kind: grpc"), "models.yaml:line 3: providers.p.kind:"),
        (("provider: p", "provider: q"), "models.yaml:line 7: models.m.provider: unknown provider 'q'"),
        (
            ("base_url: http://127.0.0.1:9/v1", "base_url: 127.0.0.1:9"),
            "models.yaml:line 4: providers.p.base_url",
        ),
    ],
)
def test_validation_errors_name_the_line_and_reason(change: tuple[str, str], expected: str) -> None:
    message = error_of(MINIMAL.replace(*change))
    assert message.startswith(expected), message


def test_invalid_yaml_names_the_line() -> None:
    message = error_of("providers:\n  p: {kind: openai\nmodels: {}\n")
    assert message.startswith("models.yaml:line 3: invalid YAML"), message


def test_duplicate_model_ids_are_refused() -> None:
    message = error_of(MINIMAL + "  m:\n    provider: p\n    context_window: 5\n")
    assert message.startswith("models.yaml:line 9: invalid YAML: duplicate key 'm'"), message


def test_alias_clashing_with_another_model_is_refused() -> None:
    text = MINIMAL + "  n:\n    provider: p\n    context_window: 5\n    aliases: [m]\n"
    assert "models.n.aliases: 'm' already names model 'm'" in error_of(text)


def test_fallback_must_name_another_model() -> None:
    text = MINIMAL.replace("context_window: 1000", "context_window: 1000\n    fallbacks: [ghost]")
    assert "models.m.fallbacks: 'ghost' is not another model id" in error_of(text)


def test_missing_catalog_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_catalog(tmp_path / "nope.yaml")
    assert "nope.yaml: cannot read the model catalog" in caught.value.message


def test_disabled_models_are_rejected_by_resolve(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(MINIMAL + "  retired:\n    provider: p\n    context_window: 5\n    enabled: false\n")
    gateway = LLMGateway(EngineConfig(models_path=path), load_catalog(path, env={}))
    assert [m.id for m in gateway.list_models()] == ["m", "retired"]
    with pytest.raises(Exception, match="Valid models: m"):
        gateway.resolve("retired")


def test_default_model_setting_must_name_an_enabled_model(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(MINIMAL)
    with pytest.raises(ConfigError, match="ARIA_DEFAULT_MODEL='ghost'"):
        LLMGateway.from_config(EngineConfig(models_path=path, default_model="ghost"))


async def test_llm_base_url_shortcut_adds_a_default_model(fake_llm: FakeLLM, tmp_path: Path) -> None:
    config = EngineConfig(
        models_path=REPO_ROOT / "models.yaml",
        llm_base_url=fake_llm.base_url,
        llm_model="my-served-model",
        llm_context_window=16384,
    )
    gateway = LLMGateway.from_config(config, env={"ARIA_LLM_API_KEY": "sk-shortcut"})
    try:
        assert gateway.default_model == "my-served-model"
        info = gateway.resolve("my-served-model")
        assert info.context_window == 16384 and not info.priced
        fake_llm.enqueue(Reply("served"))

        completion = await gateway.complete(gateway.default_model, [{"role": "user", "content": "hi"}])

        assert completion.content == "served"
        assert fake_llm.requests[0]["model"] == "my-served-model"
        assert fake_llm.request_headers[0]["authorization"] == "Bearer sk-shortcut"
    finally:
        await gateway.aclose()


def test_shortcut_with_a_catalog_model_name_keeps_its_prices(fake_llm: FakeLLM) -> None:
    config = EngineConfig(
        models_path=REPO_ROOT / "models.yaml", llm_base_url=fake_llm.base_url, llm_model="gpt-4o-mini"
    )
    gateway = LLMGateway.from_config(config, env={})
    info = gateway.resolve("gpt-4o-mini")
    assert info.provider == "custom" and info.available
    assert info.input_price == Decimal("0.15")


def test_shortcut_needs_both_url_and_model() -> None:
    with pytest.raises(ConfigError, match="must be set together"):
        LLMGateway.from_config(EngineConfig(llm_base_url="http://127.0.0.1:1/v1"), env={})
