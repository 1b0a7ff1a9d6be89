"""GET /metrics: the cluster's figures in Prometheus' text format, read from the store at scrape time.

Every process works against the one store, so any server's scrape shows every worker's work, and
``debunkbot worker`` processes need no port. The series (README, "Metrics"):

- ``debunkbot_deliveries{state,channel,tier}``: deliveries by the delivery log's state
  (pending, held, delivered, failed);
- ``debunkbot_attempt_latency_seconds{channel}``: a histogram of every attempt's latency;
- ``debunkbot_queue_depth{channel}`` and ``debunkbot_queue_oldest_pending_age_seconds{channel}``;
- ``debunkbot_outlets_paused`` and ``debunkbot_outlets_breaker_open``;
- ``debunkbot_urgent_notices_late``: urgent notices not everywhere ``DEBUNKBOT_URGENT_DEADLINE`` after release;
- ``debunkbot_store_errors_total{kind}``: failed store calls, in every process;
- ``debunkbot_store_up``: 0 when this scrape could not read the store (and nothing else is shown).

    >>> text = (await client.get("/metrics")).text                        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bot.store import STORE_FAULTS, describe_fault
from bot.store.metrics import LABELS, Figures

if TYPE_CHECKING:
    from bot.web import Site

router = APIRouter(tags=["metrics"])
log = logging.getLogger("debunkbot.web")

UNKNOWN = "unknown"  # the channel and tier of an outlet no longer in the matrix


class StoreCollector(Collector):
    """Reads the figures from the store on every collect; the outlets' channels from the live matrix."""

    def __init__(self, site: Site) -> None:
        self.site = site

    def describe(self) -> list[Metric]:
        return []  # registered without a collect, which would read the store

    def collect(self) -> Iterator[Metric]:
        store, settings = self.site.store, self.site.settings
        with contextlib.suppress(*STORE_FAULTS):  # this process's own first (a locked store: at the next scrape)
            store.errors.save()
        try:
            figures = store.metrics.figures(timedelta(minutes=settings.urgent_deadline))
        except STORE_FAULTS as exc:
            log.warning("/metrics could not read the store: %s", describe_fault(exc))
            yield _gauge("debunkbot_store_up", "1 when this scrape read the store, 0 when it could not", 0)
            return
        yield _gauge("debunkbot_store_up", "1 when this scrape read the store, 0 when it could not", 1)
        yield from self.families(figures)

    def families(self, figures: Figures) -> Iterator[Metric]:
        outlets = self.site.matrix.by_id

        def channel(outlet_id: str) -> str:
            outlet = outlets.get(outlet_id)
            return outlet.channel if outlet else UNKNOWN

        def tier(outlet_id: str) -> str:
            outlet = outlets.get(outlet_id)
            return outlet.tier.value if outlet else UNKNOWN

        deliveries = GaugeMetricFamily("debunkbot_deliveries", "Deliveries by state (pending, held, delivered, "
                                       "failed), their outlet's channel and tier", labels=["state", "channel", "tier"])
        by_label: dict[tuple[str, str, str], int] = {}
        for (outlet_id, state), count in figures.deliveries.items():
            key = (state, channel(outlet_id), tier(outlet_id))
            by_label[key] = by_label.get(key, 0) + count
        for key, count in sorted(by_label.items()):
            deliveries.add_metric(list(key), count)
        yield deliveries

        latency = HistogramMetricFamily("debunkbot_attempt_latency_seconds", "Latency of every attempt (one HTTP "
                                        "try, or one feed fetch), by the outlet's channel", labels=["channel"])
        for name, buckets in sorted(figures.latency.items()):
            cumulative, total, seconds = [], 0, 0.0
            for le in LABELS:
                count, spent = buckets.get(le, (0, 0.0))
                total, seconds = total + count, seconds + spent
                cumulative.append((le if le == "+Inf" else floatToGoString(float(le)), float(total)))
            latency.add_metric([name], cumulative, seconds)
        yield latency

        depth = GaugeMetricFamily("debunkbot_queue_depth", "Deliveries released and not yet delivered or failed: "
                                  "due, in flight, waiting for a retry, or held at a paused, broken or rate-limited "
                                  "outlet", labels=["channel"])
        age = GaugeMetricFamily("debunkbot_queue_oldest_pending_age_seconds", "Seconds since the notice of the "
                                "oldest such delivery was released", labels=["channel"])
        queued = {outlet.channel: (0, 0.0) for outlet in outlets.values()}  # every channel, 0 when none wait
        for outlet_id, (count, oldest) in figures.queued.items():
            waited = (figures.now - oldest).total_seconds() if oldest and figures.now else 0.0
            name = channel(outlet_id)
            before = queued.get(name, (0, 0.0))  # an outlet no longer in the matrix: "unknown"
            queued[name] = (before[0] + count, max(before[1], waited))
        for name, (count, waited) in sorted(queued.items()):
            depth.add_metric([name], count)
            age.add_metric([name], max(waited, 0.0))
        yield depth
        yield age

        yield _gauge("debunkbot_outlets_paused", "Outlets paused (410, or failing for the whole auto-pause "
                     "window) until an operator resumes them", figures.paused)
        yield _gauge("debunkbot_outlets_breaker_open", "Outlets whose circuit breaker is open (not paused)",
                     figures.breakers_open)
        yield _gauge("debunkbot_urgent_notices_late", "Urgent notices released more than DEBUNKBOT_URGENT_DEADLINE "
                     "minutes ago that some outlet does not have yet", figures.late_urgent)
        errors = CounterMetricFamily("debunkbot_store_errors", "Store calls that failed (locked, unavailable, "
                                     "disk_full), in every process, added to the store by the process that saw "
                                     "them once the store answers again", labels=["kind"])
        for kind in ("locked", "unavailable", "disk_full"):
            errors.add_metric([kind], figures.store_errors.get(kind, 0))
        yield errors


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


@router.get("/metrics", summary="Prometheus metrics of the whole cluster, read from the store (no token)",
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(request.app.state.site))
    # the store calls are blocking: off the event loop
    body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
