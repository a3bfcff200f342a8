"""HTTP for devices without MQTT: upload a sample, read its record and its image.

Uploads go through the same bridge as MQTT messages (same validation, same
store, same ordering per device); the answer comes once the ImageReceived
event is durable. Bad input gets its reason in the response, not a dead letter.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from edgeloop_ingest import metrics
from edgeloop_ingest.adapters.blobstore import BlobNotFoundError
from edgeloop_ingest.bridge import Bridge
from edgeloop_ingest.handlers import handle_upload
from edgeloop_ingest.service import Accepted, IngestService, SampleRecord
from edgeloop_ingest.validation import RejectionCode

# Domain errors -> HTTP status codes, in one place.
STATUS_FOR_REJECTION: dict[RejectionCode, int] = {
    RejectionCode.EMPTY: status.HTTP_400_BAD_REQUEST,
    RejectionCode.TOO_LARGE: status.HTTP_413_CONTENT_TOO_LARGE,
    RejectionCode.UNSUPPORTED_FORMAT: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    RejectionCode.TOO_MANY_PIXELS: status.HTTP_422_UNPROCESSABLE_CONTENT,
    RejectionCode.CORRUPT: status.HTTP_422_UNPROCESSABLE_CONTENT,
    RejectionCode.BAD_ID: status.HTTP_422_UNPROCESSABLE_CONTENT,
    RejectionCode.BAD_TOPIC: status.HTTP_400_BAD_REQUEST,
    RejectionCode.BAD_TELEMETRY: status.HTTP_422_UNPROCESSABLE_CONTENT,
}


class SampleOut(BaseModel):
    sample_id: str
    device_id: str
    site_id: str
    received_at: datetime
    sha256: str
    size_bytes: int
    format: str
    content_type: str
    width: int
    height: int
    ingress: str
    mqtt_topic: str | None
    blob_uri: str
    image_url: str

    @classmethod
    def of(cls, record: SampleRecord) -> SampleOut:
        return cls(
            sample_id=record.sample_id,
            device_id=record.device_id,
            site_id=record.site_id,
            received_at=record.received_at,
            sha256=record.sha256,
            size_bytes=record.size_bytes,
            format=record.format,
            content_type=record.content_type,
            width=record.width,
            height=record.height,
            ingress=record.ingress,
            mqtt_topic=record.mqtt_topic,
            blob_uri=record.blob_uri,
            image_url=f"/v1/samples/{record.sample_id}/image",
        )


def get_bridge(request: Request) -> Bridge:
    bridge: Bridge | None = getattr(request.app.state, "bridge", None)
    if bridge is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "ingest is starting or stopping")
    return bridge


def get_service(request: Request) -> IngestService:
    service: IngestService = request.app.state.service
    return service


BridgeDep = Annotated[Bridge, Depends(get_bridge)]
ServiceDep = Annotated[IngestService, Depends(get_service)]

router = APIRouter(prefix="/v1/samples", tags=["samples"])


def _rejected(code: RejectionCode, reason: str) -> JSONResponse:
    return JSONResponse({"detail": reason, "code": code.value}, status_code=STATUS_FOR_REJECTION[code])


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The raw body, or None as soon as it exceeds ``limit`` (nothing more is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _read_upload(upload: UploadFile, limit: int) -> bytes | None:
    data = await upload.read(limit + 1)
    return None if len(data) > limit else data


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SampleOut,
    summary="Upload an image: raw body with ?device_id=&site_id=, or multipart/form-data (file, device_id, site_id)",
    responses={400: {}, 413: {}, 415: {}, 422: {}},
)
async def upload_sample(
    request: Request,
    bridge: BridgeDep,
    device_id: Annotated[str | None, Query(description="Device id (raw uploads)")] = None,
    site_id: Annotated[str | None, Query(description="Site id (raw uploads)")] = None,
) -> Response:
    limit = bridge.service.limits.max_bytes
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                metrics.HTTP_UPLOADS.labels("rejected").inc()
                return _rejected(RejectionCode.EMPTY, "multipart upload without a 'file' part")
            device_id = _form_text(form.get("device_id")) or device_id
            site_id = _form_text(form.get("site_id")) or site_id
            payload = await _read_upload(upload, limit)
        finally:
            await form.close()
    else:
        payload = await _read_limited(request, limit)
    if payload is None:
        metrics.HTTP_UPLOADS.labels("rejected").inc()
        metrics.REJECTIONS.labels("http", "image", RejectionCode.TOO_LARGE.value).inc()
        return _rejected(RejectionCode.TOO_LARGE, f"image is larger than the limit of {limit} bytes")
    outcome = await handle_upload(bridge, payload=payload, device_id=device_id, site_id=site_id)
    if not isinstance(outcome, Accepted) or outcome.sample is None:
        return _rejected(outcome.code, outcome.reason)  # type: ignore[union-attr]
    body = SampleOut.of(outcome.sample).model_dump(mode="json")
    return JSONResponse(
        body, status_code=status.HTTP_201_CREATED, headers={"Location": f"/v1/samples/{outcome.sample.sample_id}"}
    )


def _form_text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


async def _find(service: IngestService, sample_id: str) -> SampleRecord:
    record = await asyncio.to_thread(service.get_sample, sample_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sample with id {sample_id!r}")
    return record


@router.get("/{sample_id}", response_model=SampleOut)
async def get_sample(sample_id: str, service: ServiceDep) -> SampleOut:
    return SampleOut.of(await _find(service, sample_id))


@router.get("/{sample_id}/image", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def get_sample_image(sample_id: str, service: ServiceDep) -> Response:
    record = await _find(service, sample_id)
    try:
        data = await asyncio.to_thread(service.read_image, record)
    except BlobNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"the image of sample {sample_id!r} is missing") from exc
    headers = {"ETag": f'"{record.sha256}"', "Cache-Control": "public, max-age=31536000, immutable"}
    return Response(data, media_type=record.content_type, headers=headers)
