"""HTTP routes of the edge agent: what it is doing, for operators and the console (no inference over HTTP: devices
speak MQTT to the site broker)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

from edgeloop_common.http_errors import ServiceNotRunningError, StatusForError
from edgeloop_common.mqtt_asyncio import AsyncMqttClient
from fastapi import APIRouter, Depends, Query, Request

from edgeloop_edge.canary import CanaryWatcher
from edgeloop_edge.joint import CloudClassifier
from edgeloop_edge.service import EdgeAgent
from edgeloop_edge.settings import Settings
from edgeloop_edge.store import EdgeStore
from edgeloop_edge.uplink import UplinkForwarder

# Domain errors -> HTTP status (installed by app.py). The agent's routes only read state.
STATUS_FOR_ERROR: StatusForError = {}


@dataclass
class EdgeState:
    """What the routes need, set on ``app.state.edge`` in the lifespan."""

    settings: Settings
    agent: EdgeAgent
    store: EdgeStore
    forwarder: UplinkForwarder | None
    cloud: CloudClassifier | None
    canary: CanaryWatcher | None
    mqtt: AsyncMqttClient


def edge_state(request: Request) -> EdgeState:
    state: EdgeState | None = getattr(request.app.state, "edge", None)
    if state is None:
        raise ServiceNotRunningError("the edge agent is starting")
    return state


Edge = Annotated[EdgeState, Depends(edge_state)]
Limit = Annotated[int, Query(ge=1, le=1000, description="How many, newest first.")]

router = APIRouter(prefix="/v1", tags=["edge"])


@router.get("/status")
async def status(edge: Edge) -> dict[str, Any]:
    """The site, the version answering, the site's canary, the uplink queue and the links."""
    depth = await asyncio.to_thread(edge.store.depth)
    last = edge.agent.last_answer
    settings = edge.settings
    return {
        "site_id": settings.site,
        "model_name": settings.model_name,
        "model_server": settings.model_server_url,
        "last_answer": None
        if last is None
        else {
            "model_name": last.model_name,
            "model_version": last.model_version,
            "served_by": last.served_by,
            "at": last.at.isoformat(),
        },
        "site_broker_connected": edge.mqtt.connected,
        "pictures_waiting": edge.agent.waiting,
        "uplink": {
            "ingest_url": settings.ingest_url or None,
            "policy": settings.uplink_policy,
            "link_up": edge.forwarder.link_up if edge.forwarder else False,
            "last_error": edge.forwarder.last_error if edge.forwarder else "uplink off (no ingest_url)",
            "queued_records": depth.records,
            "queued_image_bytes": depth.image_bytes,
            "unanswered": depth.unanswered,
            "set_aside": depth.set_aside,
            "max_records": settings.uplink_max_records,
            "max_bytes": settings.uplink_max_bytes,
        },
        "joint": {
            "cloud_url": settings.cloud_url or None,
            "budget_ms": settings.joint_budget_ms,
            "link_down": edge.cloud.link_down if edge.cloud else None,
        },
        "canary": _canary(edge.canary),
        "rejected": depth.rejected,
    }


def _canary(watcher: CanaryWatcher | None) -> dict[str, Any]:
    if watcher is None:
        return {"deployer_url": None, "version": None, "weight": 0.0, "endpoint": None, "last_error": "off"}
    canary = watcher.current
    return {
        "deployer_url": watcher.deployer_url,
        "version": canary.version if canary else None,
        "weight": canary.weight if canary else 0.0,
        "endpoint": canary.endpoint if canary else None,
        "last_error": watcher.last_error,
    }


@router.get("/rejected")
async def rejected(edge: Edge, limit: Limit = 100) -> list[dict[str, Any]]:
    """Messages that were not pictures the agent could answer, with the reason (the edge's dead letters)."""
    return await asyncio.to_thread(edge.store.rejected, limit)


@router.get("/set-aside")
async def set_aside(edge: Edge, limit: Limit = 100) -> list[dict[str, Any]]:
    """Uplink records ingest refused for good (4xx), with its reason."""
    return await asyncio.to_thread(edge.store.set_aside_records, limit)
