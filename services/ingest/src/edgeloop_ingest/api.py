"""HTTP: upload a sample (devices without MQTT), read its record and its image; list, filter and label
samples, and the labeling queue; take edge agents' uplink records.

Uploads go through the same bridge as MQTT messages (same validation, same
store, same ordering per device); the answer comes once the ImageReceived
event is durable. A label is answered once its SampleLabeled event is durable.
Bad input gets its reason in the response, not a dead letter.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Annotated

from edgeloop_common.api_auth import SERVICE, AccessTable
from edgeloop_common.events import ServedBy, utc_now
from edgeloop_common.http_errors import ServiceNotRunningError, StatusForError
from edgeloop_common.uplink import IMAGE_PART, RECORD_PART, UPLINK_PATH, UplinkAnswer
from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from edgeloop_ingest.blobs import BlobIntegrityError, BlobNotFoundError, BlobStoreUnavailableError
from edgeloop_ingest.bridge import Bridge
from edgeloop_ingest.dead_letters import DeadLetterRepository
from edgeloop_ingest.devices import CommandsUnavailableError, InvalidDeviceIdError, request_capture
from edgeloop_ingest.handlers import handle_uplink, handle_upload, label_sample, label_samples
from edgeloop_ingest.labeling import (
    MAX_BUCKET_S,
    MAX_PAGE_SIZE,
    MIN_BUCKET_S,
    ActivityQuery,
    Cursor,
    InvalidLabelError,
    InvalidQueryError,
    LabelingService,
    Sample,
    SampleImageMissingError,
    SamplePage,
    SampleQuery,
    SiteActivity,
    UnknownSampleError,
)
from edgeloop_ingest.service import Accepted, IngestService, SampleRecord
from edgeloop_ingest.uplink import (
    MAX_RECORD_BYTES,
    InvalidUplinkRecordError,
    UnknownUplinkRecordError,
    UnsupportedUplinkRequestError,
    UplinkArrival,
    UplinkImageRejectedError,
    UplinkRefusedError,
    UplinkService,
    UplinkUnavailableError,
)
from edgeloop_ingest.validation import RejectionCode

log = logging.getLogger(__name__)

# Domain errors -> HTTP status, in one place (installed by app.py).
# Who may call what, where the method alone does not say (edgeloop_common.api_auth): only the edge agents (a
# service token) and admins send uplink records.
ACCESS: AccessTable = {f"POST {UPLINK_PATH}": SERVICE}

STATUS_FOR_ERROR: StatusForError = {
    UnknownSampleError: status.HTTP_404_NOT_FOUND,
    SampleImageMissingError: status.HTTP_404_NOT_FOUND,
    InvalidLabelError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    InvalidQueryError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    UplinkRefusedError: status.HTTP_400_BAD_REQUEST,
    UnsupportedUplinkRequestError: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    InvalidUplinkRecordError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    UnknownUplinkRecordError: status.HTTP_404_NOT_FOUND,
    UplinkUnavailableError: status.HTTP_503_SERVICE_UNAVAILABLE,
    InvalidDeviceIdError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    CommandsUnavailableError: status.HTTP_503_SERVICE_UNAVAILABLE,
    # A stored picture whose bytes are not its hash is refused, never served; an unreachable S3 store is 503.
    BlobIntegrityError: status.HTTP_500_INTERNAL_SERVER_ERROR,
    BlobStoreUnavailableError: status.HTTP_503_SERVICE_UNAVAILABLE,
}

# A rejected upload is an outcome, not an error: its status by reason code (the body adds the code).
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
    label: str | None = None
    labeled_by: str | None = None
    labeled_at: datetime | None = None
    predicted_label: str | None = None
    confidence: float | None = None
    scores: dict[str, float] | None = None
    model_name: str | None = None
    model_version: int | None = None
    hard_example: bool = False
    hard_example_reason: str | None = None
    predicted_at: datetime | None = None
    served_by: ServedBy | None = Field(None, description="Who answered: 'edge' (the site's agent) or 'cloud'.")

    @classmethod
    def of_sample(cls, sample: Sample) -> SampleOut:
        out = cls.of(sample.record)
        if sample.label is not None:
            out = out.model_copy(
                update={
                    "label": sample.label.label,
                    "labeled_by": sample.label.labeled_by,
                    "labeled_at": sample.label.labeled_at,
                }
            )
        if sample.prediction is not None:
            prediction = sample.prediction
            out = out.model_copy(
                update={
                    "predicted_label": prediction.predicted_label,
                    "confidence": prediction.confidence,
                    "scores": prediction.scores,
                    "model_name": prediction.model_name,
                    "model_version": prediction.model_version,
                    "hard_example": prediction.hard_example,
                    "hard_example_reason": prediction.hard_example_reason,
                    "predicted_at": prediction.predicted_at,
                    "served_by": prediction.served_by,
                }
            )
        return out

    @classmethod
    def of(cls, record: SampleRecord) -> SampleOut:
        """The record alone (a sample just received has no prediction or label yet)."""
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
        raise ServiceNotRunningError("ingest is starting or stopping")
    return bridge


def get_service(request: Request) -> IngestService:
    service: IngestService = request.app.state.service
    return service


def get_labeling(request: Request) -> LabelingService:
    labeling: LabelingService | None = getattr(request.app.state, "labeling", None)
    if labeling is None:
        raise ServiceNotRunningError("ingest is starting or stopping")
    return labeling


def get_dead_letters(request: Request) -> DeadLetterRepository:
    dead_letters: DeadLetterRepository | None = getattr(request.app.state, "dead_letters", None)
    if dead_letters is None:
        raise ServiceNotRunningError("ingest is starting")
    return dead_letters


def get_uplink(request: Request) -> UplinkService:
    uplink: UplinkService | None = getattr(request.app.state, "uplink", None)
    if uplink is None:
        raise ServiceNotRunningError("ingest is starting or stopping")
    return uplink


BridgeDep = Annotated[Bridge, Depends(get_bridge)]
ServiceDep = Annotated[IngestService, Depends(get_service)]
LabelingDep = Annotated[LabelingService, Depends(get_labeling)]
UplinkDep = Annotated[UplinkService, Depends(get_uplink)]
DeadLettersDep = Annotated[DeadLetterRepository, Depends(get_dead_letters)]

router = APIRouter(prefix="/v1/samples", tags=["samples"])
labels_router = APIRouter(prefix="/v1/labels", tags=["labels"])
queue_router = APIRouter(prefix="/v1/labeling", tags=["labels"])
uplink_router = APIRouter(prefix=UPLINK_PATH, tags=["uplink"])
devices_router = APIRouter(prefix="/v1/devices", tags=["devices"])
stats_router = APIRouter(prefix="/v1/stats", tags=["samples"])


class SamplePageOut(BaseModel):
    samples: list[SampleOut]
    next: str | None = Field(description="Cursor of the next page (pass it as ?after=); null on the last page.")

    @classmethod
    def of(cls, page: SamplePage) -> SamplePageOut:
        return cls(
            samples=[SampleOut.of_sample(sample) for sample in page.samples],
            next=page.next.encode() if page.next else None,
        )


class LabelIn(BaseModel):
    label: str = Field(description="Class name: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit.")
    labeled_by: str = Field(description="Who labeled (a person or a tool), 1-128 printable characters.")


class BatchLabelItem(BaseModel):
    sample_id: str
    label: str


class BatchLabelsIn(BaseModel):
    labels: list[BatchLabelItem] = Field(max_length=MAX_PAGE_SIZE)
    labeled_by: str


class LabelErrorOut(BaseModel):
    sample_id: str
    reason: str


class BatchLabelsOut(BaseModel):
    labeled: int
    errors: list[LabelErrorOut]


def _cursor(after: str | None) -> Cursor | None:
    return Cursor.decode(after) if after else None


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
                bridge.metrics.http_uploads.labels("rejected").inc()
                return _rejected(RejectionCode.EMPTY, "multipart upload without a 'file' part")
            device_id = _form_text(form.get("device_id")) or device_id
            site_id = _form_text(form.get("site_id")) or site_id
            payload = await _read_upload(upload, limit)
        finally:
            await form.close()
    else:
        payload = await _read_limited(request, limit)
    if payload is None:
        bridge.metrics.http_uploads.labels("rejected").inc()
        bridge.metrics.rejections.labels("http", "image", RejectionCode.TOO_LARGE.value).inc()
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
        raise UnknownSampleError(f"no sample with id {sample_id!r}")
    return record


@router.get(
    "",
    response_model=SamplePageOut,
    summary="List samples, oldest first, with filters; page with ?after=<next>",
    responses={422: {}},
)
async def list_samples(
    labeling: LabelingDep,
    device_id: str | None = None,
    site_id: str | None = None,
    label: str | None = None,
    labeled: Annotated[bool | None, Query(description="true: only labeled samples; false: only unlabeled")] = None,
    predicted_label: str | None = None,
    min_confidence: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    max_confidence: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    hard_example: bool | None = None,
    served_by: Annotated[ServedBy | None, Query(description="who answered: edge or cloud")] = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601; UTC if no offset)")] = None,
    until: Annotated[datetime | None, Query(description="received before (ISO 8601; UTC if no offset)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
    after: Annotated[str | None, Query(description="the 'next' cursor of the previous page")] = None,
) -> SamplePageOut:
    query = SampleQuery(
        device_id=device_id,
        site_id=site_id,
        label=label,
        labeled=labeled,
        predicted_label=predicted_label,
        min_confidence=min_confidence,
        max_confidence=max_confidence,
        hard_example=hard_example,
        served_by=served_by,
        since=since,
        until=until,
        limit=limit,
        after=_cursor(after),
    )
    page = await asyncio.to_thread(labeling.find, query)
    return SamplePageOut.of(page)


@router.get("/{sample_id}", response_model=SampleOut, responses={404: {}})
async def get_sample(sample_id: str, labeling: LabelingDep) -> SampleOut:
    return SampleOut.of_sample(await asyncio.to_thread(labeling.get, sample_id))


@router.put(
    "/{sample_id}/label",
    response_model=SampleOut,
    summary="Label a sample (relabeling allowed); publishes SampleLabeled",
    responses={404: {}, 422: {}},
)
async def put_label(sample_id: str, body: LabelIn, bridge: BridgeDep, labeling: LabelingDep) -> SampleOut:
    sample = await label_sample(bridge, labeling, sample_id, body.label, body.labeled_by)
    return SampleOut.of_sample(sample)


@router.get(
    "/{sample_id}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}}},
        404: {"description": "No such sample.", "content": {"application/json": {}}},
    },
)
async def get_sample_image(sample_id: str, service: ServiceDep) -> Response:
    record = await _find(service, sample_id)
    try:
        data = await asyncio.to_thread(service.read_image, record)
    except BlobNotFoundError as exc:  # its message names a hash; the client asked for a sample
        raise SampleImageMissingError(f"the image of sample {sample_id!r} is missing") from exc
    headers = {"ETag": f'"{record.sha256}"', "Cache-Control": "public, max-age=31536000, immutable"}
    return Response(data, media_type=record.content_type, headers=headers)


@labels_router.post(
    "",
    response_model=BatchLabelsOut,
    summary="Label many samples; each labeled one publishes SampleLabeled, each other gets its reason",
    responses={422: {}},
)
async def post_labels(body: BatchLabelsIn, bridge: BridgeDep, labeling: LabelingDep) -> BatchLabelsOut:
    items = [(item.sample_id, item.label) for item in body.labels]
    result = await label_samples(bridge, labeling, items, body.labeled_by)  # a bad labeled_by refuses them all
    return BatchLabelsOut(
        labeled=len(result.labeled),
        errors=[LabelErrorOut(sample_id=error.sample_id, reason=error.reason) for error in result.errors],
    )


@queue_router.get(
    "/queue",
    response_model=SamplePageOut,
    summary="Hard examples without a label, oldest first",
    responses={422: {}},
)
async def labeling_queue(
    labeling: LabelingDep,
    site_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
    after: Annotated[str | None, Query(description="the 'next' cursor of the previous page")] = None,
) -> SamplePageOut:
    page = await asyncio.to_thread(labeling.queue, site_id=site_id, limit=limit, after=_cursor(after))
    return SamplePageOut.of(page)


class QueueCountOut(BaseModel):
    site_id: str | None
    waiting: int = Field(description="Hard examples without a label (of the site): an exact count.")


@queue_router.get("/queue/count", response_model=QueueCountOut, summary="How many hard examples wait for a label")
async def labeling_queue_count(labeling: LabelingDep, site_id: str | None = None) -> QueueCountOut:
    waiting = await asyncio.to_thread(labeling.queue_count, site_id=site_id)
    return QueueCountOut(site_id=site_id, waiting=waiting)


class ActivityBucketOut(BaseModel):
    start: datetime
    samples: int = Field(description="Pictures received in the bucket.")
    labeled: int = Field(description="Of them, labeled by a person and answered by a model.")
    correct: int = Field(description="Of the labeled, those whose answer (top label) is the label.")
    accuracy: float | None = Field(description="correct / labeled; null without a label.")


class SiteActivityOut(BaseModel):
    site_id: str
    buckets: list[ActivityBucketOut]


class ActivityOut(BaseModel):
    since: datetime
    until: datetime
    bucket_s: int
    sites: list[SiteActivityOut]

    @classmethod
    def of(cls, query: ActivityQuery, sites: list[SiteActivity]) -> ActivityOut:
        return cls(
            since=query.since,
            until=query.until,
            bucket_s=query.bucket_s,
            sites=[
                SiteActivityOut(
                    site_id=site.site_id,
                    buckets=[
                        ActivityBucketOut(
                            start=b.start, samples=b.samples, labeled=b.labeled, correct=b.correct, accuracy=b.accuracy
                        )
                        for b in site.buckets
                    ],
                )
                for site in sites
            ],
        )


@stats_router.get(
    "/activity",
    response_model=ActivityOut,
    summary="Pictures received, labeled and answered right, per site and time bucket (counted by the database)",
    responses={422: {}},
)
async def activity(
    labeling: LabelingDep,
    since: Annotated[datetime | None, Query(description="from (inclusive; default: 24 hours before until)")] = None,
    until: Annotated[datetime | None, Query(description="to (exclusive; default: now)")] = None,
    bucket_s: Annotated[int, Query(ge=MIN_BUCKET_S, le=MAX_BUCKET_S, description="bucket length, seconds")] = 3600,
    site_id: str | None = None,
) -> ActivityOut:
    end = until or utc_now()
    if since is None:
        try:
            since = end - timedelta(hours=24)
        except OverflowError as exc:
            raise InvalidQueryError(f"until ({end.isoformat()}) leaves no 24 hours before it: give since") from exc
    query = ActivityQuery(since=since, until=end, bucket_s=bucket_s, site_id=site_id)
    query = query.checked()
    sites = await asyncio.to_thread(labeling.activity, query)
    return ActivityOut.of(query, sites)


class DeviceOut(BaseModel):
    site_id: str
    device_id: str
    samples: int = Field(description="Pictures received from the device.")
    last_received_at: datetime = Field(description="When its newest picture arrived.")


class CaptureIn(BaseModel):
    requested_by: str = Field("anonymous", min_length=1, max_length=128, description="Who asked (logged, sent along).")


class CaptureOut(BaseModel):
    site_id: str
    device_id: str
    topic: str = Field(description="The MQTT topic the command was published on.")
    requested_at: datetime = Field(description="Pictures received from now on answer it (filter samples by since=).")


@devices_router.get(
    "", response_model=list[DeviceOut], summary="Devices that sent pictures, the most recently heard first"
)
async def list_devices(
    labeling: LabelingDep,
    site_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
) -> list[DeviceOut]:
    seen = await asyncio.to_thread(labeling.devices, site_id=site_id, limit=limit)
    return [
        DeviceOut(site_id=d.site_id, device_id=d.device_id, samples=d.samples, last_received_at=d.last_received_at)
        for d in seen
    ]


@devices_router.post(
    "/{site_id}/{device_id}/capture",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CaptureOut,
    summary="Ask a device to take a picture now: publishes cmd/edgeloop/{site}/{device}/capture (QoS 1)",
    responses={422: {}, 503: {}},
)
async def capture(request: Request, site_id: str, device_id: str, body: CaptureIn | None = None) -> CaptureOut:
    runtime = getattr(request.app.state, "runtime", None)
    subscriber = runtime.subscriber if runtime is not None else None
    requested_by = body.requested_by if body is not None else "anonymous"
    sent = await request_capture(subscriber, site_id, device_id, requested_by=requested_by)
    log.info("capture asked of %s/%s by %s", site_id, device_id, requested_by)
    return CaptureOut(site_id=sent.site_id, device_id=sent.device_id, topic=sent.topic, requested_at=sent.requested_at)


class UplinkArrivalOut(BaseModel):
    record_id: str
    site_id: str
    device_id: str
    sequence: int
    received_at: datetime = Field(description="When the edge agent received the picture.")
    image_included: bool
    stored_at: datetime = Field(description="When ingest recorded the arrival (its events were durable then).")
    sample_id: str | None = Field(description="The sample stored for the record; null: the picture stayed at the edge.")

    @classmethod
    def of(cls, arrival: UplinkArrival) -> UplinkArrivalOut:
        return cls(
            record_id=arrival.record_id,
            site_id=arrival.site_id,
            device_id=arrival.device_id,
            sequence=arrival.sequence,
            received_at=arrival.received_at,
            image_included=arrival.image_included,
            stored_at=arrival.stored_at,
            sample_id=arrival.sample_id,
        )


@uplink_router.post(
    "",
    response_model=UplinkAnswer,
    summary="Take an edge agent's uplink record: multipart/form-data, part 'record' (UplinkRecord JSON) and part "
    "'image' (the picture's bytes, when image_included)",
    responses={400: {}, 413: {}, 415: {}, 422: {}, 503: {}},
)
async def post_uplink(request: Request, bridge: BridgeDep, uplink: UplinkDep) -> Response:
    metrics = bridge.metrics
    try:
        record_document, image = await _uplink_parts(request, uplink.ingest.limits.max_bytes)
        answer = await handle_uplink(
            uplink,
            bridge.bus,
            metrics,
            record_document=record_document,
            image=image,
            traceparent=request.headers.get("traceparent"),
        )
    except UplinkImageRejectedError as exc:  # the picture fails the checks every picture passes: as for uploads
        metrics.uplink_records.labels("refused").inc()
        metrics.rejections.labels("edge", "image", exc.code.value).inc()
        log.warning("uplink record refused (%s): %s", exc.code.value, exc.reason)
        return _rejected(exc.code, exc.reason)
    except UplinkRefusedError as exc:
        metrics.uplink_records.labels("refused").inc()
        log.warning("uplink record refused: %s", exc)
        raise
    except UplinkUnavailableError:
        metrics.uplink_records.labels("unavailable").inc()
        raise
    metrics.uplink_records.labels(answer.status).inc()
    return JSONResponse(answer.model_dump(mode="json"))


async def _uplink_parts(request: Request, image_limit: int) -> tuple[str | bytes, bytes | None]:
    """The parts ``record`` (text) and ``image`` (bytes, or None when absent) of an uplink request."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedUplinkRequestError(
            f"an uplink request is multipart/form-data with the parts {RECORD_PART!r} and {IMAGE_PART!r}"
        )
    declared = request.headers.get("content-length")
    request_limit = image_limit + MAX_RECORD_BYTES + 64 * 1024  # the picture, the record and the multipart framing
    if declared is not None and declared.isdigit() and int(declared) > request_limit:
        raise UplinkImageRejectedError(
            RejectionCode.TOO_LARGE, f"the request is {declared} bytes; a picture's limit is {image_limit} bytes"
        )
    try:
        form = await request.form(max_files=2, max_fields=2, max_part_size=MAX_RECORD_BYTES)
    except HTTPException as exc:  # Starlette's answer to a multipart body it cannot read
        raise UplinkRefusedError(f"the multipart body cannot be read: {exc.detail}") from exc
    try:
        unexpected = sorted(set(form) - {RECORD_PART, IMAGE_PART})
        if unexpected:
            raise UplinkRefusedError(
                f"unexpected part(s) {unexpected}: an uplink request has {RECORD_PART!r} and {IMAGE_PART!r}"
            )
        part = form.get(RECORD_PART)
        record = await _read_upload(part, MAX_RECORD_BYTES) if isinstance(part, UploadFile) else part
        if isinstance(part, UploadFile) and record is None:
            raise UplinkRefusedError(f"part {RECORD_PART!r} is larger than {MAX_RECORD_BYTES} bytes")
        if not record:
            raise UplinkRefusedError(f"the request has no part {RECORD_PART!r} (the UplinkRecord JSON)")
        image = form.get(IMAGE_PART)
        if image is None:
            return record, None
        if not isinstance(image, UploadFile):
            raise UplinkRefusedError(f"part {IMAGE_PART!r} must be a file part (with a filename) holding the bytes")
        data = await _read_upload(image, image_limit)
    finally:
        await form.close()
    if data is None:
        raise UplinkImageRejectedError(
            RejectionCode.TOO_LARGE, f"the picture is larger than the limit of {image_limit} bytes"
        )
    return record, data


@uplink_router.get(
    "/{record_id}",
    response_model=UplinkArrivalOut,
    summary="The arrival of an uplink record (404 until ingest has taken it)",
    responses={404: {}},
)
async def get_uplink_arrival(record_id: str, uplink: UplinkDep) -> UplinkArrivalOut:
    return UplinkArrivalOut.of(await asyncio.to_thread(uplink.get, record_id))


dead_letters_router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])


class DeadLetterOut(BaseModel):
    event_id: str
    service: str = Field(description="The service that gave up on the message.")
    reason: str
    error_type: str
    original_topic: str = Field(description="Where the message was (a Kafka topic, or mqtt for a device message).")
    site_id: str | None
    device_id: str | None
    mqtt_topic: str | None
    attempts: int
    size_bytes: int
    failed_at: datetime


class DeadLettersOut(BaseModel):
    count: int = Field(description="Dead letters kept (the newest 10,000 of the whole system) for this filter.")
    dead_letters: list[DeadLetterOut] = Field(description="The newest first.")


@dead_letters_router.get(
    "",
    response_model=DeadLettersOut,
    summary="The newest dead letters of every service (what could not be handled, and why), newest first",
)
async def list_dead_letters(
    dead_letters: DeadLettersDep,
    site_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> DeadLettersOut:
    kept = await asyncio.to_thread(dead_letters.newest, site_id=site_id, limit=limit)
    count = await asyncio.to_thread(dead_letters.count, site_id=site_id)
    return DeadLettersOut(count=count, dead_letters=[DeadLetterOut(**vars(letter)) for letter in kept])
