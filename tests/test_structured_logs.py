"""Logs are one JSON object per line, with the fields passed in `extra=`."""

from __future__ import annotations

import logging

import orjson

from aria_engine.structured_logs import JsonFormatter


def test_a_record_becomes_one_json_line_with_its_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "aria.engine", "levelname": "WARNING", "msg": "turn %s", "args": ("failed",)}
    )
    record.turn_id = "t-1"
    record.code = "provider_timeout"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["message"] == "turn failed"
    assert (entry["level"], entry["logger"]) == ("WARNING", "aria.engine")
    assert (entry["turn_id"], entry["code"]) == ("t-1", "provider_timeout")
    assert "args" not in entry and "msg" not in entry


def test_an_exception_is_kept_in_the_record() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.makeLogRecord({"msg": "failed", "exc_info": sys.exc_info()})
    entry = orjson.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]
