"""Prometheus metrics for ``/metrics``, in a registry of the agent's own.

A private ``CollectorRegistry`` (not prometheus_client's global one) keeps the exposition to what
the agent defines and lets tests build fresh instances. One process serves one ``Metrics``:
``default_metrics()``.

Under ``agent.workers`` > 1 the supervisor gives its workers a directory in
``PROMETHEUS_MULTIPROC_DIR``: prometheus_client then keeps every worker's values in files there,
and worker 0, the one serving ``/metrics`` (see ``agent/health.py``), reports the sum over all
workers (gauges: the largest value among live workers).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent.jobs.results import Result
from agent.queues.base import QueueSummary

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TARGET_SERIES = 100  # targets shown in agent_target_* at most
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class CertificateDays:
    """``agent_client_certificate_days_left``, worked out at each scrape from the profiles'
    expiry: one number a profile instead of a gauge of its own (0.7 KiB each, which counts at
    thousands of profiles), and the days are as of the scrape, not of the last check."""

    NAME = "agent_client_certificate_days_left"
    HELP = "Days until the profile's client certificate expires (negative: expired)"

    def __init__(self) -> None:
        self.expiry: dict[str, float] = {}  # profile → not-after, seconds since the epoch

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["profile"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["profile"])
        now = time.time()
        for profile, not_after in sorted(self.expiry.items()):
            family.add_metric([profile], round((not_after - now) / 86400, 3))
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._job_metrics(self.registry)
        self._queue_metrics(self.registry)
        self._credential_metrics(self.registry)
        self._service_metrics(self.registry)
        self._target_metrics(self.registry)
        self._job_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def _job_metrics(self, r: CollectorRegistry) -> None:
        self.jobs = Counter(
            "agent_jobs",
            "Jobs finished, by topic, outcome (processed | error) and error kind",
            ["topic", "outcome", "error_kind"],
            registry=r,
        )
        self.call_seconds = Histogram(
            "agent_call_duration_seconds",
            "Time from claim to result of a job, retries included",
            ["topic"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.handshakes = Counter(
            "agent_tls_handshakes", "New connections opened (each one a TLS handshake)", registry=r
        )
        self.reused = Counter(
            "agent_connections_reused", "Requests sent on a kept-alive connection", registry=r
        )

    def _queue_metrics(self, r: CollectorRegistry) -> None:
        self.claim_seconds = Histogram(
            "agent_queue_claim_seconds",
            "Time one claim took at the queue",
            buckets=CLAIM_BUCKETS,
            registry=r,
        )
        self.claim_failures = Counter(
            "agent_queue_claim_failures", "Claims the queue did not answer", registry=r
        )
        self.queue_depth = Gauge(
            "agent_queue_depth",
            "Jobs waiting in the queue (where the backend can tell)",
            registry=r,
            multiprocess_mode="livemax",
        )

    def _credential_metrics(self, r: CollectorRegistry) -> None:
        self.cert_days = CertificateDays()
        r.register(self.cert_days)
        self.vault_errors = Counter("agent_vault_errors", "Vault requests that failed", registry=r)
        self.cyberark_errors = Counter(
            "agent_cyberark_errors",
            "CyberArk CCP refreshes that failed (the last good value is kept)",
            registry=r,
        )
        self.cert_warn_days = Gauge(
            "agent_client_certificate_warn_days",
            "mid.cert.expiry.warn_days: warn this many days before a client certificate expires",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.renewal_failures = Counter(
            "agent_certificate_renewal_failures",
            "Vault PKI certificate renewals that failed (the current certificate is kept)",
            ["profile"],
            registry=r,
        )

    def _service_metrics(self, r: CollectorRegistry) -> None:
        self.lease_losses = Counter(
            "agent_lease_losses", "Claims another agent took over before their result", registry=r
        )
        self.queue_reachable = Gauge(
            "agent_queue_reachable",
            "1 when the last claim at the queue succeeded, else 0",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.queue_jobs = Gauge(
            "agent_queue_jobs",
            "Jobs in the queue by state (where the backend can tell)",
            ["state"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.queue_oldest = Gauge(
            "agent_queue_oldest_job_age_seconds",
            "How long the oldest job waiting in the queue has waited (0: none waiting)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info = Gauge(
            "agent_build_info",
            "Always 1; the agent's version as a label",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.start_time = Gauge(
            "agent_start_time_seconds",
            "When the agent process started (Unix time)",
            registry=r,
            multiprocess_mode="livemin",
        )

    def _target_metrics(self, r: CollectorRegistry) -> None:
        self.breaker_state = Gauge(
            "agent_target_breaker_state",
            "A target's circuit breaker: 0 closed, 1 open, 2 half-open (a trial call)",
            ["target"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.breaker_openings = Counter(
            "agent_target_breaker_openings",
            "Times a target's breaker opened after calls without an answer (all targets)",
            registry=r,
        )
        self.revocation_unknown = Counter(
            "agent_revocation_unknown",
            "Calls that went on (.revocation=soft) though no CRL or OCSP answer could be had",
            registry=r,
        )
        self.target_waiting = Gauge(
            "agent_target_waiting_jobs",
            "Jobs waiting at a target's gate (a limit or an open breaker)",
            ["target"],
            registry=r,
            multiprocess_mode="livesum",
        )

    def breaker_opened(self, target: str) -> None:
        self.breaker_openings.inc()

    def set_targets(self, targets: dict[str, tuple[int, int]]) -> None:
        """(breaker state, jobs waiting) of the targets with an open breaker or waiting jobs,
        at most ``TARGET_SERIES`` of them (the most waiting first): job endpoints name the
        targets, so the label's values are bounded here. The others are dropped."""
        busy = [(k, v) for k, v in targets.items() if v != (0, 0)]
        busy.sort(key=lambda item: (-item[1][1], -item[1][0], item[0]))
        targets = dict(busy[:TARGET_SERIES])
        for gauge, index in ((self.breaker_state, 0), (self.target_waiting, 1)):
            known = {s.labels["target"] for f in gauge.collect() for s in f.samples}
            for gone in known - set(targets):
                gauge.remove(gone)
            for target, values in targets.items():
                gauge.labels(target).set(values[index])

    def job_done(self, topic: str, result: Result, seconds: float) -> None:
        kind = result.error.kind if result.error else ""
        key = (topic, result.state, kind)
        children = self._job_children.get(key)
        if children is None:  # labels() takes a lock and builds a key: once per combination
            children = (self.jobs.labels(*key), self.call_seconds.labels(topic))
            self._job_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def connection(self, new: bool) -> None:
        (self.handshakes if new else self.reused).inc()

    def claimed(self, seconds: float, failed: bool) -> None:
        self.queue_reachable.set(0 if failed else 1)
        if failed:
            self.claim_failures.inc()
        else:
            self.claim_seconds.observe(seconds)

    def set_depth(self, depth: int | None) -> None:
        if depth is not None:
            self.queue_depth.set(depth)

    def set_queue(self, summary: QueueSummary | None) -> None:
        """Jobs by state and the oldest waiting job's age, where the backend can tell."""
        if summary is None:
            return
        for state, count in summary.by_state.items():
            self.queue_jobs.labels(state).set(count)
        self.queue_depth.set(summary.by_state.get("ready", 0))
        self.queue_oldest.set(round(summary.oldest_waiting_seconds or 0.0, 3))

    def started(self, version: str, warn_days: int) -> None:
        self.build_info.labels(version).set(1)
        self.start_time.set(round(time.time(), 3))
        self.cert_warn_days.set(warn_days)

    def certificate(self, profile: str, not_after: dt.datetime | None) -> None:
        """Record the profile's expiry; a profile without a client certificate is left out."""
        if not_after is None:
            self.forget_profile(profile)
            return
        self.cert_days.expiry[profile] = not_after.timestamp()

    def cert_days_profiles(self) -> list[str]:
        """Profiles with an expiry gauge (to forget those a reload removed)."""
        return list(self.cert_days.expiry)

    def forget_profile(self, profile: str) -> None:
        self.cert_days.expiry.pop(profile, None)

    def renewal_failed(self, profile: str) -> None:
        self.renewal_failures.labels(profile).inc()

    def vault_error(self) -> None:
        self.vault_errors.inc()

    def render(self) -> bytes:
        shared = os.environ.get(MULTIPROCESS_ENV)
        if not shared:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=shared)  # type: ignore[no-untyped-call]
        registry.register(self.cert_days)  # this worker's view: all run the same checks
        return generate_latest(registry)


_default: Metrics | None = None


def default_metrics() -> Metrics:
    """The process's metrics (made on first use)."""
    global _default
    if _default is None:
        _default = Metrics()
    return _default
