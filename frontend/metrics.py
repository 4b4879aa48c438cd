"""Prometheus metrics, one registry per app (tests run several apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "sd_http_requests_total", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "sd_http_request_duration_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = Counter("sd_images_generated_total", "Images generated", registry=r)
        self.runs = Counter("sd_runs_total", "Finished runs by status", ["status"], registry=r)
        self.in_flight = Gauge("sd_runs_in_flight", "Runs queued or processing in this process", registry=r)
        self.triton_latency = Histogram(
            "sd_triton_request_duration_seconds", "Time in Triton per run", buckets=LATENCY_BUCKETS, registry=r
        )
        self.leases_lost = Counter(
            "sd_leases_lost_total", "Writes refused because another replica took the work over", ["kind"], registry=r
        )
        self.takeovers = Counter(
            "sd_takeovers_total", "Runs this replica took over from another (or from before a restart)", registry=r
        )
        self.expired = Counter(
            "sd_retention_expired_total", "Results and runs deleted by retention", ["kind"], registry=r
        )
        # Per Triton pod (fleet.py): runs placed there, and what became of them when it failed them.
        self.pod_runs = Counter(
            "sd_pod_runs_total",
            "Runs by pod: placed, unavailable (failed by the pod), failover (placed again elsewhere)",
            ["pod", "outcome"],
            registry=r,
        )
        self.pod_out = Gauge(
            "sd_pod_out", "1 while the pod is out of placement (dead, or its probe failed)", ["pod"], registry=r
        )
        self.webhooks = Counter(
            "sd_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"], registry=r
        )
