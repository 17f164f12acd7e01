"""The README documents every setting the engine reads."""

from __future__ import annotations

from aria_engine.config import REPO_ROOT, EngineConfig, ProviderTimeouts


def _env_names() -> set[str]:
    names = set()
    for name, field in EngineConfig.model_fields.items():
        if name == "timeouts":
            names |= {f"ARIA_TIMEOUTS__{part.upper()}" for part in ProviderTimeouts.model_fields}
            continue
        alias = field.validation_alias
        names.add(alias.choices[0] if alias is not None else f"ARIA_{name.upper()}")  # type: ignore[union-attr]
    return names


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0]
    missing = sorted(name for name in _env_names() if f"`{name}`" not in table)
    assert missing == []
