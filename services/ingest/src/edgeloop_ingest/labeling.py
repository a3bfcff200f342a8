"""Predictions and labels on samples: the logic behind listing, labeling and the labeling queue.

A sample (:class:`~edgeloop_ingest.service.SampleRecord`, written when the image arrived) gets

* a **prediction** from the gateway's InferenceCompleted (the newest one wins: a redelivered or
  late older prediction does not overwrite a newer one), including the hard-example verdict;
* a **label** from a person (``PUT /v1/samples/{id}/label``, batch ``POST /v1/labels``); relabeling is
  allowed and announced again. Each label is announced by a SampleLabeled event.

Hard examples without a label wait in the labeling queue, oldest first. The console's overview reads the
activity per site and time bucket (pictures received, labeled, and answered right), counted by the database.

The calls here block (database); callers in the event loop run them in a thread. Nothing here knows
about HTTP, Kafka or SQL.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, get_args

from edgeloop_common import topics
from edgeloop_common.events import InferenceCompleted, SampleLabeled, ServedBy, utc_now

from edgeloop_ingest.service import Publication, SampleRecord

MAX_PAGE_SIZE = 1000
MAX_LABELED_BY_CHARS = 128
SERVED_BY: tuple[str, ...] = get_args(ServedBy)  # who answered a picture: "edge" or "cloud"
MAX_BUCKETS = 500  # an activity query covers at most this many time buckets
MIN_BUCKET_S = 60
MAX_BUCKET_S = 7 * 24 * 3600
LABEL_RULE = "1-64 characters: letters, digits, '_', '.', '-', starting with a letter or digit"
_LABEL = re.compile(rf"^{topics.ID_PATTERN}$")


class LabelingError(Exception):
    """Base of the errors the labeling API maps to HTTP statuses."""


class UnknownSampleError(LabelingError):
    pass


class InvalidLabelError(LabelingError):
    pass


class InvalidQueryError(LabelingError):
    pass


class SampleImageMissingError(LabelingError):
    """The sample is recorded, but its image is gone from the blob store."""


@dataclass(frozen=True)
class Prediction:
    predicted_label: str
    confidence: float
    scores: dict[str, float]
    model_name: str
    model_version: int
    hard_example: bool
    hard_example_reason: str | None
    predicted_at: datetime
    served_by: ServedBy | None = None  # the side that answered: "edge" (the site's agent) or "cloud" (the gateway)

    @classmethod
    def of(cls, event: InferenceCompleted) -> Prediction:
        return cls(
            predicted_label=event.top_label,
            confidence=event.confidence,
            scores=dict(event.scores),
            model_name=event.model_name,
            model_version=event.model_version,
            hard_example=event.hard_example,
            hard_example_reason=event.hard_example_reason,
            predicted_at=as_utc(event.completed_at),
            served_by=event.served_by,
        )


@dataclass(frozen=True)
class Label:
    label: str
    labeled_by: str
    labeled_at: datetime


@dataclass(frozen=True)
class Sample:
    """A sample as the API shows it: the record, and its prediction and label where it has them."""

    record: SampleRecord
    prediction: Prediction | None = None
    label: Label | None = None

    @property
    def sample_id(self) -> str:
        return self.record.sample_id


class PredictionOutcome(enum.Enum):
    STORED = "stored"
    STALE = "stale"  # the sample already holds a newer prediction
    UNKNOWN_SAMPLE = "unknown_sample"


@dataclass(frozen=True)
class Cursor:
    """Position after the last sample of a page; samples are ordered by (received_at, sample_id)."""

    received_at: datetime
    sample_id: str

    def encode(self) -> str:
        raw = json.dumps([self.received_at.isoformat(), self.sample_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            received_at, sample_id = json.loads(raw)
            return cls(received_at=as_utc(datetime.fromisoformat(received_at)), sample_id=str(sample_id))
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise InvalidQueryError(f"cursor {text!r} is not one this API gave out (use the 'next' of a page)") from exc

    @classmethod
    def after(cls, sample: Sample) -> Cursor:
        return cls(received_at=as_utc(sample.record.received_at), sample_id=sample.sample_id)


@dataclass(frozen=True)
class SampleQuery:
    """Filters of ``GET /v1/samples``; None means "any". ``since`` is inclusive, ``until`` exclusive."""

    device_id: str | None = None
    site_id: str | None = None
    label: str | None = None
    labeled: bool | None = None
    predicted_label: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    hard_example: bool | None = None
    served_by: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    after: Cursor | None = None

    def checked(self) -> SampleQuery:
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise InvalidQueryError(f"limit {self.limit} is outside 1..{MAX_PAGE_SIZE}")
        if self.served_by is not None and self.served_by not in SERVED_BY:
            raise InvalidQueryError(f"served_by {self.served_by!r} is not one of {', '.join(SERVED_BY)}")
        low, high = self.min_confidence, self.max_confidence
        for name, value in (("min_confidence", low), ("max_confidence", high)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise InvalidQueryError(f"{name} {value} is outside 0..1")
        if low is not None and high is not None and low > high:
            raise InvalidQueryError(f"min_confidence {low} is above max_confidence {high}")
        if self.since is not None and self.until is not None and as_utc(self.since) >= as_utc(self.until):
            raise InvalidQueryError(f"since ({self.since.isoformat()}) is not before until ({self.until.isoformat()})")
        return self


@dataclass(frozen=True)
class SamplePage:
    samples: list[Sample]
    next: Cursor | None


@dataclass(frozen=True)
class DeviceSeen:
    """A device that sent pictures: how many, and when the newest arrived."""

    site_id: str
    device_id: str
    samples: int
    last_received_at: datetime


@dataclass(frozen=True)
class ActivityQuery:
    """Pictures received in [since, until), counted per site and per time bucket of ``bucket_s`` seconds.

    Buckets are aligned to multiples of ``bucket_s`` since the Unix epoch (hours start on the hour), so the first
    bucket may start before ``since`` and count only from it.
    """

    since: datetime
    until: datetime
    bucket_s: int = 3600
    site_id: str | None = None

    def checked(self) -> ActivityQuery:
        if not MIN_BUCKET_S <= self.bucket_s <= MAX_BUCKET_S:
            raise InvalidQueryError(f"bucket_s {self.bucket_s} is outside {MIN_BUCKET_S}..{MAX_BUCKET_S}")
        since, until = as_utc(self.since), as_utc(self.until)
        if since >= until:
            raise InvalidQueryError(f"since ({since.isoformat()}) is not before until ({until.isoformat()})")
        low, high = self._bucket_range(since, until)
        buckets = high - low + 1  # counted, not listed: a window of centuries is refused at once
        if buckets > MAX_BUCKETS:
            raise InvalidQueryError(
                f"{buckets} buckets of {self.bucket_s} s between since and until; the limit is {MAX_BUCKETS} "
                "(a shorter window or longer buckets)"
            )
        return ActivityQuery(since=since, until=until, bucket_s=self.bucket_s, site_id=self.site_id)

    def bucket_starts(self, since: datetime | None = None, until: datetime | None = None) -> list[int]:
        """The buckets of the window, as their indexes: bucket ``i`` starts at ``i * bucket_s`` seconds."""
        low, high = self._bucket_range(since or self.since, until or self.until)
        return list(range(low, high + 1))

    def _bucket_range(self, since: datetime, until: datetime) -> tuple[int, int]:
        low = int(as_utc(since).timestamp()) // self.bucket_s
        end = as_utc(until).timestamp()
        high = int(end // self.bucket_s) - (1 if end % self.bucket_s == 0 else 0)
        return low, high


@dataclass(frozen=True)
class ActivityCount:
    """One site's pictures in one time bucket: received, labeled (and answered), answered with the label given."""

    site_id: str
    bucket: int  # starts at bucket * bucket_s seconds since the epoch
    samples: int
    labeled: int
    correct: int


@dataclass(frozen=True)
class ActivityBucket:
    start: datetime
    samples: int
    labeled: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        """The answered top label against the human label, over the bucket's labeled pictures (None: no label)."""
        return self.correct / self.labeled if self.labeled else None


@dataclass(frozen=True)
class SiteActivity:
    site_id: str
    buckets: list[ActivityBucket]  # every bucket of the window, oldest first (zeros where nothing arrived)


@dataclass(frozen=True)
class LabelItemError:
    sample_id: str
    reason: str


@dataclass(frozen=True)
class BatchLabelResult:
    labeled: list[Sample] = field(default_factory=list)
    errors: list[LabelItemError] = field(default_factory=list)


class LabelRepository(Protocol):
    def get_sample(self, sample_id: str) -> Sample | None: ...

    def record_prediction(self, sample_id: str, prediction: Prediction) -> PredictionOutcome: ...

    def set_labels(self, labels: Mapping[str, str], *, labeled_by: str, labeled_at: datetime) -> list[Sample]:
        """Label the samples that exist (``sample_id -> label``), in one transaction; return them as stored."""
        ...

    def find_samples(self, query: SampleQuery, *, limit: int) -> list[Sample]:
        """At most ``limit`` samples matching ``query`` after its cursor, ordered by (received_at, sample_id)."""
        ...

    def devices(self, *, site_id: str | None, limit: int) -> list[DeviceSeen]:
        """The devices that sent pictures (of ``site_id``), the most recently heard first, at most ``limit``."""
        ...

    def count_samples(self, query: SampleQuery) -> int:
        """How many samples match ``query`` (its cursor and limit ignored), counted by the database."""
        ...

    def activity(self, query: ActivityQuery) -> list[ActivityCount]:
        """The non-empty (site, bucket) counts of the window, counted by the database."""
        ...


@dataclass
class LabelingService:
    samples: LabelRepository
    clock: Callable[[], datetime] = utc_now

    def record_prediction(self, event: InferenceCompleted) -> PredictionOutcome:
        return self.samples.record_prediction(event.sample_id, Prediction.of(event))

    def get(self, sample_id: str) -> Sample:
        sample = self.samples.get_sample(sample_id)
        if sample is None:
            raise UnknownSampleError(f"no sample with id {sample_id!r}")
        return sample

    def label(self, sample_id: str, label: str, *, labeled_by: str) -> Sample:
        labeled_by = check_labeled_by(labeled_by)
        label = check_label(label)
        stored = self.samples.set_labels({sample_id: label}, labeled_by=labeled_by, labeled_at=self.clock())
        if not stored:
            raise UnknownSampleError(f"no sample with id {sample_id!r}")
        return stored[0]

    def label_many(self, items: Sequence[tuple[str, str]], *, labeled_by: str) -> BatchLabelResult:
        """Label what can be labeled; every other item gets its reason. ``labeled_by`` is checked for all."""
        labeled_by = check_labeled_by(labeled_by)
        errors: list[LabelItemError] = []
        wanted: dict[str, str] = {}
        seen: set[str] = set()
        for sample_id, label in items:
            if sample_id in seen:
                errors.append(LabelItemError(sample_id, "this sample id appears more than once in the batch"))
                wanted.pop(sample_id, None)
                continue
            seen.add(sample_id)
            try:
                wanted[sample_id] = check_label(label)
            except InvalidLabelError as exc:
                errors.append(LabelItemError(sample_id, str(exc)))
        stored = self.samples.set_labels(wanted, labeled_by=labeled_by, labeled_at=self.clock()) if wanted else []
        found = {sample.sample_id for sample in stored}
        errors.extend(LabelItemError(sid, f"no sample with id {sid!r}") for sid in wanted if sid not in found)
        return BatchLabelResult(labeled=stored, errors=errors)

    def find(self, query: SampleQuery) -> SamplePage:
        query = query.checked()
        found = self.samples.find_samples(query, limit=query.limit + 1)  # one more tells whether a next page exists
        page = found[: query.limit]
        more = len(found) > query.limit
        return SamplePage(samples=page, next=Cursor.after(page[-1]) if more and page else None)

    def devices(self, *, site_id: str | None = None, limit: int = 100) -> list[DeviceSeen]:
        return self.samples.devices(site_id=site_id, limit=limit)

    def queue(self, *, site_id: str | None = None, limit: int = 100, after: Cursor | None = None) -> SamplePage:
        """Hard examples without a label, oldest first."""
        return self.find(SampleQuery(site_id=site_id, hard_example=True, labeled=False, limit=limit, after=after))

    def queue_count(self, *, site_id: str | None = None) -> int:
        """How many hard examples wait for a label (of ``site_id``): an exact count, no row read."""
        return self.samples.count_samples(SampleQuery(site_id=site_id, hard_example=True, labeled=False))

    def activity(self, query: ActivityQuery) -> list[SiteActivity]:
        """Per site with pictures in the window, every bucket of the window, oldest first."""
        query = query.checked()
        counts = self.samples.activity(query)
        buckets = query.bucket_starts()
        by_site: dict[str, dict[int, ActivityCount]] = {}
        for count in counts:
            by_site.setdefault(count.site_id, {})[count.bucket] = count
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        sites = []
        for site_id in sorted(by_site):
            found = by_site[site_id]
            row = []
            for bucket in buckets:
                count = found.get(bucket)
                start = epoch + timedelta(seconds=bucket * query.bucket_s)
                row.append(
                    ActivityBucket(start, count.samples, count.labeled, count.correct)
                    if count
                    else ActivityBucket(start, 0, 0, 0)
                )
            sites.append(SiteActivity(site_id=site_id, buckets=row))
        return sites


def check_label(label: str) -> str:
    if not isinstance(label, str) or not _LABEL.match(label):
        raise InvalidLabelError(
            f"label {label!r} is not a valid class name ({LABEL_RULE}): a label names a class folder "
            "of the training data and travels in events"
        )
    return label


def check_labeled_by(labeled_by: str) -> str:
    text = labeled_by.strip() if isinstance(labeled_by, str) else ""
    if not text or len(text) > MAX_LABELED_BY_CHARS or not text.isprintable():
        raise InvalidLabelError(
            f"labeled_by {labeled_by!r} must say who labeled (1-{MAX_LABELED_BY_CHARS} printable characters)"
        )
    return text


def labeled_publication(sample: Sample) -> Publication:
    """SampleLabeled for a label just stored: a new event id each time (a relabel is a new fact)."""
    if sample.label is None:
        raise ValueError(f"sample {sample.sample_id} has no label to announce")
    record = sample.record
    event = SampleLabeled(
        sample_id=record.sample_id,
        device_id=record.device_id,
        site_id=record.site_id,
        image=record.blob_ref(),
        label=sample.label.label,
        labeled_by=sample.label.labeled_by,
        labeled_at=sample.label.labeled_at,
        predicted_label=sample.prediction.predicted_label if sample.prediction else None,
    )
    return Publication(event=event, event_id=str(uuid.uuid4()), key=record.device_id)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC; a naive time is taken as UTC (SQLite hands back naive times that were stored as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
