"""Server metrics in Prometheus' format (`/metrics`), and the same counts as JSON for `/health`.

Each server has its own registry, so two servers in one process (tests) never share counts.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tasks.serve.guardrails import Hits


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lmforge_requests", "Completed generations by finish reason", ["finish_reason"], registry=r
        )
        self.errors = Counter(
            "lmforge_errors", "Requests answered with an error status", ["status"], registry=r
        )
        self.rejected = Counter("lmforge_rejected", "Requests refused by a limit", ["reason"], registry=r)
        self.guardrail_hits = Counter(
            "lmforge_guardrail_hits", "Guardrail hits by where and what", ["where", "kind"], registry=r
        )
        self.tokens = Counter("lmforge_completion_tokens", "Generated tokens", registry=r)
        self.latency = Histogram("lmforge_request_seconds", "Generation wall time per request", registry=r)
        self.in_flight = Gauge("lmforge_in_flight", "Requests generating or queued", registry=r)

    def observe(self, hits: Hits, tokens: int, seconds: float, finish: str) -> None:
        """Count one finished generation and every guardrail hit it had."""
        self.requests.labels(finish_reason=finish).inc()
        self.tokens.inc(tokens)
        self.latency.observe(seconds)
        for where, found in (("prompt", hits.prompt_pii), ("completion", hits.completion_pii)):
            for entity, n in found.items():
                self.guardrail_hits.labels(where=where, kind=f"pii_{entity}").inc(n)
        if hits.blocked:
            self.guardrail_hits.labels(where=hits.blocked, kind="blocked").inc()

    def _samples(self, metric: str) -> list[tuple[dict[str, str], float]]:
        return [(s.labels, s.value) for m in self.registry.collect() for s in m.samples if s.name == metric]

    def guardrail_counts(self) -> dict[str, Any]:
        """{"hits": total, "by_kind": {"prompt/pii_EMAIL_ADDRESS": n, "completion/blocked": n, ...}}."""
        by_kind = {
            f"{lab['where']}/{lab['kind']}": int(v)
            for lab, v in self._samples("lmforge_guardrail_hits_total")
        }
        return {"hits": sum(by_kind.values()), "by_kind": by_kind}

    def request_counts(self) -> dict[str, Any]:
        done = {lab["finish_reason"]: int(v) for lab, v in self._samples("lmforge_requests_total")}
        errors = {lab["status"]: int(v) for lab, v in self._samples("lmforge_errors_total")}
        tokens = sum(v for _, v in self._samples("lmforge_completion_tokens_total"))
        in_flight = sum(v for _, v in self._samples("lmforge_in_flight"))
        return {
            "completed": done,
            "errors": errors,
            "completion_tokens": int(tokens),
            "in_flight": int(in_flight),
        }

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
