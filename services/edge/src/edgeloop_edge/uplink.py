"""The uplink forwarder: the edge store's answered records to ingest's ``POST /v1/uplink``, in order, resent
until ingest says it has them (docs/edge.md, "The uplink").

One record at a time, in acceptance order (per device order is what the contract promises; one stream keeps it
simply). A record leaves the edge store only on ``stored`` or ``duplicate``; a 4xx sets it aside with the reason
(no resend can change ingest's mind); anything else — the cloud unreachable, 5xx, 429 — is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from edgeloop_common.uplink import IMAGE_PART, RECORD_PART, UPLINK_PATH, UplinkAnswer, UplinkRecord

from edgeloop_edge.metrics import EdgeMetrics
from edgeloop_edge.store import EdgeStore, Picture

log = logging.getLogger(__name__)

BATCH = 64  # records read from the store at a time
IDLE_POLL_S = 0.5  # how often an empty queue is looked at again (new answers also wake the forwarder)
FIRST_BACKOFF_S = 0.25


def uplink_record(picture: Picture, site_id: str) -> UplinkRecord:
    if picture.inference is None:
        raise ValueError(f"picture {picture.record_id} has no answer yet")
    return UplinkRecord(
        record_id=picture.record_id,
        site_id=site_id,
        device_id=picture.device_id,
        sequence=picture.sequence,
        received_at=picture.received_at,
        mqtt_topic=picture.mqtt_topic,
        image_sha256=picture.sha256,
        image_size_bytes=picture.size_bytes,
        image_format=picture.format,
        width=picture.width,
        height=picture.height,
        image_included=picture.image is not None,
        inference=picture.inference,
    )


class UplinkForwarder:
    def __init__(
        self,
        store: EdgeStore,
        *,
        ingest_url: str,
        site_id: str,
        metrics: EdgeMetrics,
        timeout_s: float = 10.0,
        retry_max_s: float = 10.0,
        http: httpx.AsyncClient | None = None,
        auth: httpx.Auth | None = None,
    ) -> None:
        self.store = store
        self.ingest_url = ingest_url.rstrip("/")
        self.site_id = site_id
        self.metrics = metrics
        self.retry_max_s = retry_max_s
        self._http = http or httpx.AsyncClient(timeout=timeout_s, auth=auth)
        self._owns_http = http is None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.link_up = False
        self.last_error = ""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="uplink-forwarder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._owns_http:
            await self._http.aclose()

    def wake(self) -> None:
        """Something new was answered: forward it without waiting for the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while True:
            batch = await asyncio.to_thread(self.store.next_to_forward, BATCH)
            if not batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                continue
            for picture in batch:
                if not await self._forward(picture):
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.retry_max_s)
                    break
                backoff = FIRST_BACKOFF_S

    async def _forward(self, picture: Picture) -> bool:
        """Send one record; True when it has left the queue (stored, duplicate or set aside)."""
        record = uplink_record(picture, self.site_id)
        files: dict[str, tuple[str | None, bytes, str]] = {
            RECORD_PART: (None, record.model_dump_json().encode(), "application/json")
        }
        if picture.image is not None:
            files[IMAGE_PART] = (f"{picture.sha256}.{picture.format}", picture.image, f"image/{picture.format}")
        try:
            response = await self._http.post(f"{self.ingest_url}{UPLINK_PATH}", files=files)
        except httpx.HTTPError as exc:
            return self._failed(f"ingest unreachable: {str(exc) or type(exc).__name__}")
        if response.status_code == 200:
            answer = UplinkAnswer.model_validate_json(response.content)
            await asyncio.to_thread(self.store.forwarded, picture.record_id)
            self.metrics.uplink_records.labels(status=answer.status).inc()
            self._link(up=True)
            return True
        # 401/403 are this agent's token (missing, removed, a role that may not), not the record: resent once fixed.
        if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 408, 429):
            reason = f"ingest refused the record: HTTP {response.status_code} {_detail(response)}"
            log.error("uplink record %s set aside: %s", picture.record_id, reason)
            await asyncio.to_thread(self.store.set_aside, picture, reason)
            self.metrics.uplink_records.labels(status="refused").inc()
            self._link(up=True)
            return True
        return self._failed(f"ingest answered HTTP {response.status_code}: {_detail(response)}")

    def _failed(self, reason: str) -> bool:
        if self.link_up or not self.last_error:
            log.warning("uplink paused, retrying: %s", reason)
        self.metrics.uplink_failures.inc()
        self.last_error = reason
        self._link(up=False)
        return False

    def _link(self, *, up: bool) -> None:
        if up and not self.link_up:
            log.info("uplink to %s is up", self.ingest_url)
            self.last_error = ""
        self.link_up = up
        self.metrics.cloud_link_up.set(1 if up else 0)


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:300]
    except ValueError:
        return response.text[:300]
