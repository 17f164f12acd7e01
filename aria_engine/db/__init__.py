"""Persistence: ORM models (`models`), the engine/session factory (`engine`), migrations (`migrate`)."""
