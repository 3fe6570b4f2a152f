"""What ``GET /metrics`` shows, in Prometheus' text format, from a registry of the app's own (so two apps in one
process never share or clash): requests by endpoint and outcome, generated tokens and images (``rate()`` of the
tokens counter is tokens/s), time to first token and to first image; and, read from the scheduler at scrape time,
queue depth, busy rows, batch occupancy, steps and the scheduler's job outcomes.

Outcomes of a request: ``done``, ``cancelled`` (the client left, or the server stopped it), ``error`` (the job
failed), and the refusals ``invalid`` (4xx), ``unauthorized`` (401), ``queue_full`` (429), ``unavailable`` (503).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from fusion.document import IMAGE_KIND, TEXT_KIND
from fusion.serve.jobs import Event, Ticket

# Seconds: a tiny CPU model's first piece comes in milliseconds, a 7B model's image in tens of seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 150, 300)
OUTCOME_OF_STATUS = {401: "unauthorized", 429: "queue_full", 503: "unavailable"}
CONTENT_TYPE = CONTENT_TYPE_LATEST


class SchedulerCollector:
    """The scheduler's ``stats``, read when Prometheus scrapes."""

    def __init__(self, scheduler) -> None:
        self.stats = scheduler.stats

    def collect(self):
        s = self.stats
        yield GaugeMetricFamily("fusion_queue_depth", "jobs waiting for rows", value=s.queued)
        yield GaugeMetricFamily("fusion_busy_rows", "KV-cache rows decoding now", value=s.busy_rows)
        yield GaugeMetricFamily("fusion_max_rows", "KV-cache rows at most (--max-batch)", value=s.max_rows)
        yield GaugeMetricFamily("fusion_batch_occupancy", "busy rows / max rows",
                                value=s.busy_rows / s.max_rows if s.max_rows else 0.0)
        yield CounterMetricFamily("fusion_scheduler_steps", "decode steps the scheduler took", value=s.steps)
        jobs = CounterMetricFamily("fusion_scheduler_jobs", "jobs the scheduler ended, by outcome", labels=["outcome"])
        for outcome, n in sorted(dict(s.outcomes).items()):
            jobs.add_metric([outcome], n)
        yield jobs


class Metrics:
    """The app's counters and histograms; ``watch`` wraps a ticket's events to count them."""

    def __init__(self, scheduler) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fusion_requests", "HTTP requests by endpoint and outcome", ["endpoint", "outcome"],
                                registry=r)
        self.tokens = Counter("fusion_generated_tokens", "tokens generated (rate() is tokens/s)", registry=r)
        self.images = Counter("fusion_generated_images", "images generated", registry=r)
        self.first_token = Histogram("fusion_time_to_first_token_seconds", "submission to a job's first text piece "
                                     "or image", buckets=LATENCY_BUCKETS, registry=r)
        self.first_image = Histogram("fusion_time_to_first_image_seconds", "submission to a job's first finished "
                                     "image", buckets=LATENCY_BUCKETS, registry=r)
        r.register(SchedulerCollector(scheduler))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def refused(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, OUTCOME_OF_STATUS.get(status, "invalid" if status < 500 else "error")).inc()

    async def watch(self, ticket: Ticket, endpoint: str) -> AsyncIterator[Event]:
        """The ticket's events, timed and counted; if the reader stops before the job's end (the client left),
        the job is cancelled, which frees its rows within one step."""
        start, outcome, ended, firsts = time.perf_counter(), "cancelled", False, set()
        try:
            async for event in ticket:
                if event.kind in (TEXT_KIND, IMAGE_KIND) and "piece" not in firsts:
                    firsts.add("piece")
                    self.first_token.observe(time.perf_counter() - start)
                if event.kind == IMAGE_KIND and "image" not in firsts:
                    firsts.add("image")
                    self.first_image.observe(time.perf_counter() - start)
                if event.kind == "done":
                    ended, outcome = True, "cancelled" if "cancelled" in (event.finish_reasons or ()) else "done"
                    self.tokens.inc(event.usage.generated_tokens if event.usage else 0)
                    self.images.inc(event.usage.images if event.usage else 0)
                elif event.kind == "error":
                    ended, outcome = True, "error"
                yield event
        finally:
            if not ended:
                ticket.cancel()
            self.requests.labels(endpoint, outcome).inc()
