"""The trainer's logic: durable queue of training requests, one run per model at a time, the run's steps.

A request (an event, an HTTP call) is recorded in the trainings table and the
caller returns at once. Per model one worker task takes the queued run and
executes it; requests arriving meanwhile join the one run queued behind it
(coalescing), so any number of requests during a run give exactly one
follow-up. A run:

1. snapshot: the seed folder plus every labeled sample from ingest, split by hash;
2. train (warm start from production's weights, or from scratch) in a worker
   thread, evaluate the candidate and production on the snapshot's evaluation
   set, export the candidate (written hidden, renamed in one step);
3. register the version in the registry (the last step that creates anything
   others see), then ask the registry to promote it (its policy decides).

A failure before registration removes the export, so nothing half-made is
left: no registered version, no visible version folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from edgeloop_common.bus import BusUnavailableError
from edgeloop_common.events import TrainingReason, TrainingRequested, utc_now

from edgeloop_trainer.metrics import TrainerMetrics
from edgeloop_trainer.ports import (
    Candidate,
    Enqueued,
    LabeledSample,
    Progress,
    PromotionDecision,
    Publisher,
    RegisteredVersion,
    RegistryError,
    RegistryPort,
    RegistryUnavailableError,
    Run,
    RunNotFoundError,
    RunState,
    RunStore,
    SampleImageMissingError,
    SamplesPort,
    SnapshotStorePort,
    TrainingCancelledError,
    TrainingEngine,
    TrainingJob,
    TrainingRequest,
)
from edgeloop_trainer.snapshot import Snapshot, SnapshotError, SourceItem, build_snapshot

log = logging.getLogger(__name__)

SERVICE_NAME = "trainer"
RUN_LOG_LINES = 200  # a run's log keeps its newest lines (one per stage and epoch)

# How long the id of a counted label event is kept (older ones are forgotten when a count asks for a training),
# and why that is safe: an id is needed only while its event can be delivered again, that is until the bus records
# it processed (right after the handler) or, after a crash in between, until a consumer of the group reads it again
# from the last commit. Kafka deletes a record at most 14 days after it was written (7 days after the newest record
# of its segment, log.retention.hours=168 in infra/kafka/server.properties, and a segment rolls at least every 7
# days), so an event counted 30 days ago can no longer come again.
COUNTED_LABELS_KEPT = timedelta(days=30)
_LABEL_REQUEST_ID_NAMESPACE = uuid.UUID("0c6f6a0e-5d1b-4c38-9e43-7b2f1e4d8a55")


def label_request_id(model_name: str, label_event_id: str) -> str:
    """The id of the TrainingRequested that label event ``label_event_id`` decides for ``model_name`` (when it
    completes the count): derived from both, so publishing it again after a crash publishes the same event."""
    return str(uuid.uuid5(_LABEL_REQUEST_ID_NAMESPACE, f"trainer:new_labels:{model_name}:{label_event_id}"))


@dataclass(frozen=True)
class TrainerConfig:
    seed_data_dir: Path | None = None
    eval_fraction: float = 0.2
    warm_start: bool = True
    retrain_every_labels: int = 20
    label_models: tuple[str, ...] = ("edgeloop-classifier",)
    actor: str = SERVICE_NAME
    max_attempts: int = 2  # a run interrupted by a stop or crash is retried once
    image_fetch_concurrency: int = 8


class TrainerService:
    def __init__(
        self,
        *,
        runs: RunStore,
        registry: RegistryPort,
        samples: SamplesPort | None,
        snapshots: SnapshotStorePort,
        engine: TrainingEngine,
        publish: Publisher,
        config: TrainerConfig,
        metrics: TrainerMetrics | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.runs = runs
        self.registry = registry
        self.samples = samples
        self.snapshots = snapshots
        self.engine = engine
        self.publish = publish
        self.config = config
        self.metrics = metrics or TrainerMetrics()
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wanted: set[str] = set()
        self._live: dict[str, Progress] = {}
        self._logs: dict[str, list[str]] = {}  # each running run's log: a line per stage and epoch (RUN_LOG_LINES)
        self._stopping = threading.Event()  # read by the training thread between steps

    # -- requests -------------------------------------------------------------

    async def request_training(self, request: TrainingRequest) -> Enqueued:
        """Record the request durably, start the model's worker if idle; return without waiting for training."""
        enqueued = await asyncio.to_thread(self.runs.enqueue, request)
        if enqueued.duplicate:
            log.info("training request %s was already recorded (run %s)", request.request_id, enqueued.run_id)
        else:
            self.metrics.requests.labels(reason=request.reason).inc()
            log.info(
                "training of %s requested (%s by %s): %s run %s",
                request.model_name,
                request.reason,
                request.requested_by,
                "joined queued" if enqueued.coalesced else "queued",
                enqueued.run_id,
            )
        if not self._stopping.is_set():
            self._kick(request.model_name)
        return enqueued

    async def request_by_hand(
        self, model_name: str, reason: TrainingReason, requested_by: str, detail: str = ""
    ) -> Enqueued:
        """An HTTP request: queued first, then published as TrainingRequested with the request's id.

        Others see the request as an event; the trainer's own consumer finds the
        id already recorded and does nothing more.
        """
        request = TrainingRequest(f"http-{uuid.uuid4()}", model_name, reason, requested_by, detail, self.clock())
        enqueued = await self.request_training(request)
        event = TrainingRequested(
            model_name=model_name,
            reason=reason,
            requested_by=requested_by,
            detail=detail,
            requested_at=request.requested_at,
        )
        try:
            await self.publish(event, request.request_id)
        except BusUnavailableError as exc:
            log.warning("training request %s is queued but its event was not published: %s", request.request_id, exc)
        return enqueued

    async def count_label(self, label_event_id: str) -> list[TrainingRequested]:
        """One more label (event ``label_event_id``): for every model trained on labels, ask for training every N
        labels. Exact under redelivery: a label event is counted once however often it comes, and the request its
        count decides is published under an id derived from it, the same id each time it is published again."""
        every = self.config.retrain_every_labels
        if every <= 0:
            return []
        now = self.clock()
        for model_name in self.config.label_models:
            await asyncio.to_thread(
                self.runs.count_label,
                model_name,
                label_event_id,
                every=every,
                request_id=label_request_id(model_name, label_event_id),
                now=now,
                forget_before=now - COUNTED_LABELS_KEPT,
            )
        return await self._publish_label_requests()

    async def _publish_label_requests(self) -> list[TrainingRequested]:
        """Publish every request the label count recorded, then forget it. A crash between the two leaves it
        recorded: the next label event (the same one, redelivered) publishes the same event again, which consumers
        skip by its id."""
        published: list[TrainingRequested] = []
        for request in await asyncio.to_thread(self.runs.label_requests):
            event = TrainingRequested(
                model_name=request.model_name,
                reason="new_labels",
                requested_by=self.config.actor,
                detail=f"{request.labels} new labels since the last training",
                requested_at=request.requested_at,
            )
            await self.publish(event, request.event_id)
            await asyncio.to_thread(self.runs.label_request_published, request.event_id)
            published.append(event)
        return published

    async def request_scheduled(self) -> None:
        for model_name in self.config.label_models:
            await self.publish(
                TrainingRequested(
                    model_name=model_name, reason="schedule", requested_by=self.config.actor, detail="periodic training"
                )
            )

    # -- lifecycle --------------------------------------------------------------

    async def resume(self) -> None:
        """After a start: clean what a crash left, fail and re-queue interrupted runs, start queued ones."""
        removed = await asyncio.to_thread(self.engine.remove_stale_staging)
        for path in removed:
            log.warning("removed a half-written export left by an interrupted run: %s", path)
        for run in await asyncio.to_thread(self.runs.find, state="running", limit=1000):
            await self._discard_unregistered(run)
            await self._fail_and_requeue(run, "interrupted: the trainer stopped during this run")
        for model_name in await asyncio.to_thread(self.runs.queued_models):
            self._kick(model_name)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking runs; a training in progress stops at its next step and is queued again."""
        self._stopping.set()
        workers = [task for task in self._workers.values() if not task.done()]
        if not workers:
            return
        _done, pending = await asyncio.wait(workers, timeout=timeout_s)
        for task in pending:
            task.cancel()  # the run stays 'running' in the table; the next start re-queues it
        await asyncio.gather(*pending, return_exceptions=True)

    async def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until no worker is busy (tests, the demo)."""
        async with asyncio.timeout(timeout_s):
            while any(not task.done() for task in self._workers.values()):
                await asyncio.gather(*self._workers.values(), return_exceptions=True)

    # -- reading ---------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run | None:
        run = await asyncio.to_thread(self.runs.get, run_id)
        return self._with_live_progress(run) if run else None

    async def run(self, run_id: str) -> Run:
        """The run; :class:`RunNotFoundError` if there is none of that id."""
        run = await self.get_run(run_id)
        if run is None:
            raise RunNotFoundError(f"no training run {run_id!r}")
        return run

    async def list_runs(self, *, model_name: str | None, state: RunState | None, limit: int) -> list[Run]:
        runs = await asyncio.to_thread(self.runs.find, model_name=model_name, state=state, limit=limit)
        return [self._with_live_progress(run) for run in runs]

    def _with_live_progress(self, run: Run) -> Run:
        live = self._live.get(run.run_id)
        if run.state != "running" or live is None:
            return run
        return replace(run, progress=self._progress_record(run.run_id, live))

    # -- the worker ------------------------------------------------------------

    def _kick(self, model_name: str) -> None:
        self._wanted.add(model_name)
        task = self._workers.get(model_name)
        if task is None or task.done():
            task = asyncio.create_task(self._work(model_name), name=f"training:{model_name}")
            task.add_done_callback(_report_worker_end)
            self._workers[model_name] = task

    async def _work(self, model_name: str) -> None:
        lock = self._locks.setdefault(model_name, asyncio.Lock())
        async with lock:
            while not self._stopping.is_set():
                self._wanted.discard(model_name)
                run = await asyncio.to_thread(self.runs.start_next, model_name, self.clock())
                if run is None:
                    if model_name in self._wanted:
                        continue  # a request came in while we looked
                    return
                await self._execute(run)

    async def _execute(self, run: Run) -> None:
        log.info("training run %s of %s started (%s)", run.run_id, run.model_name, _reasons(run))
        started = time.perf_counter()
        self.metrics.runs_in_progress.inc()
        try:
            result = await self._pipeline(run)
        except TrainingCancelledError:
            self.metrics.run_finished("interrupted", time.perf_counter() - started)
            await self._fail_and_requeue(run, "cancelled: the trainer stopped during this run")
            return
        except Exception as exc:  # the run fails with its reason, logged; the worker goes on
            self.metrics.run_finished("failed", time.perf_counter() - started)
            log.exception("training run %s of %s failed", run.run_id, run.model_name)
            await asyncio.to_thread(
                self.runs.update, run.run_id, state="failed", error=_describe(exc), finished_at=self.clock()
            )
            return
        finally:
            self.metrics.runs_in_progress.dec()
            self._live.pop(run.run_id, None)
            done = self._logs.pop(run.run_id, [])  # a failed run keeps the log its last saved progress holds
        self.metrics.run_finished("succeeded", time.perf_counter() - started)
        finished = Progress("done", 1.0)
        await asyncio.to_thread(
            self.runs.update,
            run.run_id,
            state="succeeded",
            result=result,
            finished_at=self.clock(),
            progress=finished.as_dict() | {"log": [*done, self._log_line(finished)][-RUN_LOG_LINES:]},
        )
        log.info(
            "training run %s of %s succeeded: version %s, accuracy %.3f, %s",
            run.run_id,
            run.model_name,
            result["version"],
            result["metrics"]["accuracy"],
            result["promotion"]["decision"],
        )

    async def _pipeline(self, run: Run) -> dict[str, Any]:
        model_name = run.model_name
        await self._set_progress(run.run_id, Progress("snapshot", message="building the dataset snapshot"))
        production = await self.registry.production(model_name)
        snapshot = await self._snapshot(model_name)
        await asyncio.to_thread(self.runs.update, run.run_id, snapshot_id=snapshot.snapshot_id)
        latest = await self.registry.latest_version(model_name)
        job = TrainingJob(
            run_id=run.run_id,
            model_name=model_name,
            snapshot=snapshot,
            image_path=self.snapshots.image_path,
            min_version=(latest or 0) + 1,
            warm_start_from=production if self.config.warm_start else None,
            baseline=production,
            parent_snapshot=await self._parent_snapshot(production) if self.config.warm_start else None,
        )
        if production is None:
            log.info("%s has no production version: training from scratch, no baseline", model_name)
        elif not self.config.warm_start:
            log.info("warm start is off: training %s from scratch", model_name)
        candidate = await asyncio.to_thread(self.engine.train, job, self._progress_callback(run.run_id))
        await asyncio.to_thread(self.runs.update, run.run_id, candidate_version=candidate.version)
        await self._set_progress(run.run_id, Progress("registering", 1.0, message=f"version {candidate.version}"))
        registered = await self._register(run, candidate, snapshot)
        await self._set_progress(run.run_id, Progress("promoting", 1.0))
        decision = await self._promote(run, registered)
        return {
            "version": registered.version,
            "artifact_uri": registered.artifact_uri,
            "snapshot_id": snapshot.snapshot_id,
            "evaluation_set_id": snapshot.evaluation_set_id,
            "warm_start": candidate.warm_started,
            "parent_version": candidate.parameters.get("parent_version"),
            "metrics": candidate.metrics,
            "parameters": candidate.parameters,
            "train_duration_s": round(candidate.train_duration_s, 2),
            "promotion": {
                "promoted": decision.promoted,
                "decision": decision.decision,
                "previous_version": decision.previous_version,
            },
        }

    # -- snapshot --------------------------------------------------------------

    async def _snapshot(self, model_name: str) -> Snapshot:
        # Labels counted so far are in this snapshot: the next automatic request counts from here.
        await asyncio.to_thread(self.runs.reset_labels, model_name)
        sources: list[SourceItem] = []
        if self.config.seed_data_dir is not None:
            sources += await asyncio.to_thread(self.snapshots.seed_items, self.config.seed_data_dir)
        if self.samples is not None:
            sources += await self._labeled_sources(await self.samples.labeled_samples())
        snapshot = build_snapshot(sources, self.config.eval_fraction)
        await asyncio.to_thread(self.snapshots.save, snapshot)
        log.info(
            "snapshot %s: %d images (train %s, eval %s), evaluation set %s",
            snapshot.snapshot_id,
            len(snapshot.items),
            snapshot.counts("train"),
            snapshot.counts("eval"),
            snapshot.evaluation_set_id,
        )
        return snapshot

    async def _parent_snapshot(self, production: RegisteredVersion | None) -> Snapshot | None:
        """The snapshot production was trained on, to tell what is new since; None when it is not known here."""
        snapshot_id = (production.metrics if production else {}).get("dataset_snapshot_id")
        if not isinstance(snapshot_id, str):
            return None
        try:
            return await asyncio.to_thread(self.snapshots.load, snapshot_id)
        except (SnapshotError, OSError, ValueError, KeyError) as exc:
            log.warning(
                "snapshot %s of production is not readable (%s): new images are the labeled ones", snapshot_id, exc
            )
            return None

    async def _labeled_sources(self, samples: Sequence[LabeledSample]) -> list[SourceItem]:
        """Cache every labeled sample's image (fetching only those not cached) and list them as sources."""
        assert self.samples is not None
        limit = asyncio.Semaphore(self.config.image_fetch_concurrency)

        async def fetch(sample: LabeledSample) -> SourceItem | None:
            if await asyncio.to_thread(self.snapshots.has_image, sample.sha256):
                return SourceItem(f"sample:{sample.sample_id}", sample.label, sample.sha256)
            async with limit:
                try:
                    data = await self.samples.read_image(sample)  # type: ignore[union-attr]
                except SampleImageMissingError as exc:
                    log.warning("sample %s left out of the snapshot: %s", sample.sample_id, exc)
                    return None
            if hashlib.sha256(data).hexdigest() != sample.sha256:
                log.warning("sample %s left out of the snapshot: its image does not match its sha256", sample.sample_id)
                return None
            await asyncio.to_thread(self.snapshots.put_image, data)
            return SourceItem(f"sample:{sample.sample_id}", sample.label, sample.sha256)

        fetched = await asyncio.gather(*(fetch(sample) for sample in samples))
        return [source for source in fetched if source is not None]

    # -- registry --------------------------------------------------------------

    async def _register(self, run: Run, candidate: Candidate, snapshot: Snapshot) -> RegisteredVersion:
        body = registration_body(candidate, snapshot)
        try:
            return await self.registry.register(candidate.model_name, body)
        except RegistryUnavailableError as exc:
            # The answer may have been lost after the registry committed: ask before removing the export.
            existing = await self._registered_after_all(candidate, exc)
            if existing is not None:
                return existing
            await self._discard(candidate.model_name, candidate.version)
            raise
        except RegistryError:
            await self._discard(candidate.model_name, candidate.version)  # refused: nothing was registered
            raise

    async def _registered_after_all(self, candidate: Candidate, error: RegistryError) -> RegisteredVersion | None:
        try:
            existing = await self.registry.get_version(candidate.model_name, candidate.version)
        except RegistryError as exc:
            raise RegistryUnavailableError(
                f"{error}; whether version {candidate.version} was registered is unknown, so its export "
                f"{candidate.path} is kept until the registry can tell (checked at the next start)"
            ) from exc
        if existing is not None and existing.artifact_uri == candidate.artifact_uri:
            log.info(
                "%s version %d was registered although the answer was lost", candidate.model_name, candidate.version
            )
            return existing
        return None

    async def _promote(self, run: Run, registered: RegisteredVersion) -> PromotionDecision:
        reason = f"training run {run.run_id} ({_reasons(run)})"
        try:
            return await self.registry.promote(
                registered.model_name, registered.version, reason=reason, actor=self.config.actor
            )
        except RegistryError as exc:
            # The version is registered and usable: the run succeeded, promotion can be asked again by hand.
            log.error("promotion of %s version %d was not decided: %s", registered.model_name, registered.version, exc)
            return PromotionDecision(False, f"promotion request failed: {exc}", None)

    async def _discard(self, model_name: str, version: int) -> None:
        if await asyncio.to_thread(self.engine.discard, model_name, version):
            log.info("removed the unregistered export of %s version %d", model_name, version)

    async def _discard_unregistered(self, run: Run) -> None:
        """An interrupted run may have exported a version it never registered: remove that export."""
        if run.candidate_version is None:
            return
        try:
            registered = await self.registry.get_version(run.model_name, run.candidate_version)
        except RegistryError as exc:
            log.warning(
                "cannot check whether %s version %d was registered: %s", run.model_name, run.candidate_version, exc
            )
            return
        if registered is None:
            await self._discard(run.model_name, run.candidate_version)

    async def _fail_and_requeue(self, run: Run, why: str) -> None:
        if run.attempt >= self.config.max_attempts:
            error = f"{why}; not retried (attempt {run.attempt} of {self.config.max_attempts})"
        else:
            first = run.requests[0] if run.requests else None
            retry = TrainingRequest(
                request_id=f"{run.run_id}.retry",
                model_name=run.model_name,
                reason=first.reason if first else "manual",
                requested_by=self.config.actor,
                detail=f"retry of run {run.run_id} ({why})",
                requested_at=self.clock(),
            )
            enqueued = await asyncio.to_thread(self.runs.enqueue, retry, attempt=run.attempt + 1)
            error = f"{why}; queued again as run {enqueued.run_id}"
        log.warning("training run %s of %s: %s", run.run_id, run.model_name, error)
        await asyncio.to_thread(self.runs.update, run.run_id, state="failed", error=error, finished_at=self.clock())

    # -- progress --------------------------------------------------------------

    async def _set_progress(self, run_id: str, progress: Progress) -> None:
        self._live[run_id] = progress
        log.info("run %s: %s %s", run_id, progress.stage, progress.message)
        self._note(run_id, progress)
        await asyncio.to_thread(self.runs.update, run_id, progress=self._progress_record(run_id, progress))

    def _note(self, run_id: str, progress: Progress) -> None:
        lines = self._logs.setdefault(run_id, [])
        lines.append(self._log_line(progress))
        del lines[:-RUN_LOG_LINES]

    def _log_line(self, progress: Progress) -> str:
        epoch = f" epoch {progress.epoch}/{progress.epochs}" if progress.stage == "training" and progress.epoch else ""
        message = f": {progress.message}" if progress.message else ""
        return f"{self.clock():%H:%M:%S} {progress.stage}{epoch}{message}"

    def _progress_record(self, run_id: str, progress: Progress) -> dict[str, Any]:
        """What a run's ``progress`` holds: the latest stage and its log so far (GET /v1/trainings)."""
        return progress.as_dict() | {"log": list(self._logs.get(run_id, []))}

    def _progress_callback(self, run_id: str) -> Callable[[Progress], None]:
        """Called from the training thread: live progress always, the table at every new epoch or stage."""
        last_saved: list[tuple[str, int]] = []

        def report(progress: Progress) -> None:
            if self._stopping.is_set():
                raise TrainingCancelledError("the trainer is stopping")
            self._live[run_id] = progress
            key = (progress.stage, progress.epoch)
            if not last_saved or last_saved[-1] != key:
                last_saved.append(key)
                self._note(run_id, progress)
                self.runs.update(run_id, progress=self._progress_record(run_id, progress))
                if progress.stage == "training" and progress.epoch:
                    log.info("run %s: epoch %d/%d %s", run_id, progress.epoch, progress.epochs, progress.message)
                else:
                    log.info("run %s: %s %s", run_id, progress.stage, progress.message)

        return report


def registration_body(candidate: Candidate, snapshot: Snapshot) -> dict[str, Any]:
    """``POST /v1/models/{name}/versions`` (docs/learning-loop.md)."""
    return {
        "version": candidate.version,
        "artifact_uri": candidate.artifact_uri,
        "signature": candidate.signature,
        "metrics": candidate.metrics,
        "reference_stats": candidate.reference_stats,
        "lineage": {
            "dataset_snapshot_id": snapshot.snapshot_id,
            "parent_version": candidate.parameters.get("parent_version"),
            "parameters": candidate.parameters,
        },
        "train_started_at": candidate.train_started_at.isoformat(),
        "train_duration_s": round(candidate.train_duration_s, 3),
    }


def _report_worker_end(task: asyncio.Task[None]) -> None:
    """A worker that died (its table unreachable) leaves its runs queued or running: the next request or start
    picks them up. Say so instead of letting asyncio complain later."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %s; its runs wait for the next request or restart", task.get_name(), task.exception())


def _reasons(run: Run) -> str:
    reasons = sorted({request.reason for request in run.requests})
    return ", ".join(reasons) if reasons else "no recorded request"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
