"""Aria Engine: a self-hostable chat engine library (sessions, turns, streaming, tools, accounting)."""

__version__ = "0.1.0"
