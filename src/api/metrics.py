"""Prometheus metrics of one app, in a registry of its own (so each test app counts only its own traffic).

aria_http_requests_total{method,route,status}   requests, by route template (not raw path)
aria_http_request_seconds{method,route}         request duration
aria_turns_total{finish_reason}                 finished turns (REST and WebSocket)
aria_ttft_seconds                               time to first token
aria_tokens_total{kind}                         input / output / reasoning tokens
aria_cost_usd_total                             spend
aria_provider_errors_total{code}                provider failures (status codes and error events)
aria_active_streams                             open WebSocket connections
aria_active_turns                               turns running in this process (WebSocket)
aria_breaker_state{provider}                    0 closed, 1 half open, 2 open
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from aria_engine.chat_engine import ChatResponse
    from aria_engine.events import DoneEvent, ErrorEvent

__all__ = ["CONTENT_TYPE", "ApiMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PROVIDER_CODES = {
    "llm_error",
    "provider_unavailable",
    "circuit_open",
    "provider_timeout",
    "provider_rejected",
}
_BREAKER_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class _BreakerCollector(Collector):
    def __init__(self) -> None:
        self.source: Callable[[], dict[str, str]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "aria_breaker_state",
            "Circuit breaker per provider: 0 closed, 1 half open, 2 open.",
            labels=["provider"],
        )
        states = self.source() if self.source is not None else {}
        for provider, state in sorted(states.items()):
            family.add_metric([provider], _BREAKER_VALUES.get(state, 0.0))
        yield family


class ApiMetrics:
    """The app's metrics; also the StreamManager's `TurnObserver`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "aria_http_requests", "HTTP requests.", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "aria_http_request_seconds", "HTTP request duration.", ["method", "route"], registry=r
        )
        self.turns = Counter("aria_turns", "Finished turns.", ["finish_reason"], registry=r)
        self.ttft = Histogram(
            "aria_ttft_seconds",
            "Time to first token.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.tokens = Counter("aria_tokens", "LLM tokens.", ["kind"], registry=r)
        self.cost = Counter("aria_cost_usd", "Spend in USD.", registry=r)
        self.provider_errors = Counter("aria_provider_errors", "Provider failures.", ["code"], registry=r)
        self.active_streams = Gauge("aria_active_streams", "Open WebSocket connections.", registry=r)
        self.active_turns = Gauge("aria_active_turns", "Turns running for WebSocket clients.", registry=r)
        self._breakers = _BreakerCollector()
        r.register(self._breakers)

    def bind(
        self,
        streams: Callable[[], int],
        turns: Callable[[], int],
        breaker_states: Callable[[], dict[str, str]],
    ) -> None:
        """Read live values at scrape time (no bookkeeping on the hot path)."""
        self.active_streams.set_function(streams)
        self.active_turns.set_function(turns)
        self._breakers.source = breaker_states

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def provider_error(self, code: str) -> None:
        self.provider_errors.labels(code).inc()

    # -- TurnObserver ------------------------------------------------------------------------------

    def turn_done(self, event: DoneEvent) -> None:
        self._turn(
            event.finish_reason,
            event.ttft_ms,
            event.input_tokens,
            event.output_tokens,
            event.reasoning_tokens,
            Decimal(event.cost),
        )

    def turn_error(self, event: ErrorEvent) -> None:
        if event.code in _PROVIDER_CODES:
            self.provider_error(event.code)

    def response_done(self, response: ChatResponse) -> None:
        self._turn(
            response.finish_reason,
            response.ttft_ms,
            response.input_tokens,
            response.output_tokens,
            response.reasoning_tokens,
            response.cost,
        )

    def _turn(
        self,
        reason: str,
        ttft_ms: int | None,
        input_tokens: int,
        output_tokens: int,
        reasoning: int,
        cost: Decimal,
    ) -> None:
        self.turns.labels(str(reason)).inc()
        if ttft_ms is not None:
            self.ttft.observe(ttft_ms / 1000)
        self.tokens.labels("input").inc(input_tokens)
        self.tokens.labels("output").inc(output_tokens)
        self.tokens.labels("reasoning").inc(reasoning)
        self.cost.inc(float(cost))

    def render(self) -> bytes:
        return generate_latest(self.registry)
