"""Sensor telemetry scored in the cloud (docs/telemetry.md, "Scoring"): TelemetryReceived -> the failure model ->
TelemetryScored and, on a crossing, MaintenanceAlert on Kafka and the alert to the device on MQTT.

The scoring core (windows, micro-batching, thresholds, hysteresis) is ``edgeloop_common.telemetry.scoring``,
shared with the edge agent. Here: which model serves which site (a router of its own, following the deployer's
DeploymentUpdated for the telemetry model only), which sites are scored at their edge (their readings are not
scored again), and where the scores go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from edgeloop_common.bus import EventBus, Outgoing
from edgeloop_common.events import TelemetryReceived
from edgeloop_common.telemetry.scoring import ScoredReading, TelemetryScorer

from edgeloop_inference_gateway.metrics import GatewayMetrics
from edgeloop_inference_gateway.routing import ModelRouter

log = logging.getLogger(__name__)

SendAlert = Callable[[str, str, bytes], Awaitable[None]]


def parse_sites(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


class TelemetryPublisher:
    """The scorer's ``emit``: a batch's scores and alerts handed to the bus at once and in order (``enqueue_many``:
    one record batch per partition), each alert to its device on MQTT, then every acknowledgement awaited."""

    def __init__(self, bus: EventBus, metrics: GatewayMetrics, send_alert: SendAlert | None) -> None:
        self.bus = bus
        self.metrics = metrics
        self.send_alert = send_alert

    async def __call__(self, scored: Sequence[ScoredReading]) -> None:
        outgoing: list[Outgoing] = []
        for reading in scored:
            outgoing.append(Outgoing(reading.scored, key=reading.scored.device_id))
            if reading.alert is not None:
                outgoing.append(Outgoing(reading.alert, key=reading.alert.device_id))
        acks = await self.bus.enqueue_many(outgoing)
        alerts = [reading.alert for reading in scored if reading.alert is not None]
        try:
            if self.send_alert is not None:
                for alert in alerts:
                    await self.send_alert(alert.site_id, alert.device_id, alert.model_dump_json().encode())
        finally:
            results = await asyncio.gather(*acks, return_exceptions=True)  # every one awaited, even on a failure
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise failures[0]
        self.metrics.telemetry_scored.inc(len(scored))
        self.metrics.maintenance_alerts.inc(len(alerts))


class GatewayTelemetry:
    def __init__(
        self, scorer: TelemetryScorer, router: ModelRouter, metrics: GatewayMetrics, edge_sites: frozenset[str]
    ) -> None:
        self.scorer = scorer
        self.router = router
        self.metrics = metrics
        self.edge_sites = edge_sites

    async def take(self, events: Sequence[TelemetryReceived]) -> None:
        """Readings into the scorer, in order (returns before they are scored: see the scoring module)."""
        outcomes = {"scored_at_edge": 0, "queued": 0, "window_filling": 0}
        for event in events:
            if event.site_id in self.edge_sites:  # its edge agent scores it and uplinks the scores
                outcomes["scored_at_edge"] += 1
                continue
            queued = await self.scorer.add(
                event.site_id,
                event.device_id,
                event.readings,
                measured_at=event.measured_at or event.received_at,
                machine_event=event.machine_event,
            )
            outcomes["queued" if queued else "window_filling"] += 1
        for outcome, count in outcomes.items():
            if count:
                self.metrics.telemetry_readings.labels(outcome=outcome).inc(count)
