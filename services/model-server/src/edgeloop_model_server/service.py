"""The serving core, shared by the REST and gRPC front ends: which versions are served, and running them.

Every model has a folder of integer version folders. A background poll scans
them; a version folder is considered once it holds ``saved_model.pb`` and its
files did not change between two scans (a half-copied folder is left alone).
The version policy picks the versions to serve. A new version is loaded and
warmed up while the old one keeps answering; then the map of served versions
is swapped in one assignment, and the old version is unloaded once its
in-flight requests have finished. A version that fails to load is recorded as
END with the reason, logged, and not retried until its files change; the
versions already serving stay.

Front ends ask for a version by number, by label, or the latest; they hold a
:class:`Lease` for the duration of a request, and run model calls through
:meth:`ModelService.run`, which uses a thread pool so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeloop_model_server.config import ModelConfig
from edgeloop_model_server.errors import Code, invalid_argument, not_found
from edgeloop_model_server.metrics import ServerMetrics

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


class State(enum.Enum):
    """TF Serving's ``ModelVersionStatus.State``."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error_code: Code = Code.OK
    error_message: str = ""


class Servable(Protocol):
    """A loaded model version (see :class:`edgeloop_model_server.savedmodel.SavedModelServable`)."""

    model_name: str
    version: int
    signature_defs: Mapping[str, Any]

    def signature(self, name: str) -> Any: ...

    def run(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Iterable[str] = ()
    ) -> dict[str, np.ndarray]: ...

    def warm_up(self) -> int: ...

    def close(self) -> None: ...


ServableFactory = Callable[[str, int, Path], Servable]


@dataclass
class Lease:
    """A servable held by one request; the version is not unloaded before every lease is returned."""

    servable: Servable
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def version(self) -> int:
        return self.servable.version


@dataclass
class _Model:
    config: ModelConfig
    statuses: dict[int, VersionStatus] = field(default_factory=dict)
    serving: Mapping[int, Lease] = field(default_factory=dict)  # replaced as a whole, never mutated
    seen: dict[int, Fingerprint] = field(default_factory=dict)  # the previous scan
    failed: dict[int, Fingerprint] = field(default_factory=dict)  # files that failed to load
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def scan_version_folders(base_path: Path) -> dict[int, Fingerprint]:
    """Integer version folders holding a SavedModel, each with a fingerprint of its files (name, size, mtime)."""
    found: dict[int, Fingerprint] = {}
    try:
        entries = list(os.scandir(base_path))
    except FileNotFoundError:
        return found
    for entry in entries:
        if not entry.is_dir() or not entry.name.isdigit():
            continue
        folder = Path(entry.path)
        if not (folder / "saved_model.pb").exists() and not (folder / "saved_model.pbtxt").exists():
            continue
        files: list[tuple[str, int, int]] = []
        for root, _dirs, names in os.walk(folder):
            for name in names:
                with suppress(FileNotFoundError):  # a file removed while we look: the next scan sees it
                    stat = os.stat(os.path.join(root, name))
                    files.append((os.path.relpath(os.path.join(root, name), folder), stat.st_size, stat.st_mtime_ns))
        found[int(entry.name)] = tuple(sorted(files))
    return found


class ModelService:
    def __init__(
        self,
        configs: Sequence[ModelConfig],
        servable_factory: ServableFactory,
        *,
        poll_interval_s: float = 1.0,
        warmup: bool = True,
        unload_grace_s: float = 30.0,
        inference_threads: int = 4,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._models = {config.name: _Model(config) for config in configs}
        self._factory = servable_factory
        self._poll_interval_s = poll_interval_s
        self._warmup = warmup
        self._unload_grace_s = unload_grace_s
        self._metrics = metrics or ServerMetrics()
        self._inference = ThreadPoolExecutor(inference_threads, thread_name_prefix="inference")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self._poll_task: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load what is on disk now (two scans a short moment apart), then keep polling in the background."""
        for model in self._models.values():
            log.info(
                "serving model %s from %s (policy %s, labels %s)",
                model.config.name,
                model.config.base_path,
                model.config.policy.describe(),
                dict(model.config.labels) or "none",
            )
        await self.refresh()
        await asyncio.sleep(min(self._poll_interval_s, 0.5))
        await self.refresh()
        for name, model in self._models.items():
            if not model.serving:
                log.warning("model %s: no servable version under %s yet; waiting for one", name, model.config.base_path)
        self._poll_task = asyncio.create_task(self._poll(), name="model-version-poll")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        for model in self._models.values():
            for lease in model.serving.values():
                lease.servable.close()
            model.serving = {}
        self._inference.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.refresh()
            except OSError as exc:  # a model folder we cannot read now; the next poll tries again
                log.warning("scanning model folders failed: %s", exc)

    async def refresh(self) -> None:
        """One scan of every model's folder and the loads and unloads it calls for."""
        for model in list(self._models.values()):
            async with model.lock:
                await self._reconcile(model)

    async def reconfigure(self, configs: Sequence[ModelConfig]) -> None:
        """Serve exactly ``configs`` from now on (TF Serving's HandleReloadConfigRequest).

        A model no longer listed is unloaded; a new one is loaded; a listed one keeps serving what it serves
        while its new policy and labels are applied (a new base path: its versions are those found there).
        The whole list is checked before anything changes.
        """
        names = [config.name for config in configs]
        if len(set(names)) != len(names):
            raise invalid_argument(f"the model config names a model twice: {names}")
        for config in configs:
            for label, version in config.labels.items():
                if version < 1:
                    raise invalid_argument(f"model {config.name}: label {label} names version {version}")
        wanted = {config.name: config for config in configs}
        for name in [name for name in self._models if name not in wanted]:
            model = self._models.pop(name)
            async with model.lock:
                for version in sorted(model.serving):
                    await self._unload(model, version)
            self._metrics.available_versions.labels(name).set(0)
            log.info("model %s: no longer configured, unloaded", name)
        for name, config in wanted.items():
            model = self._models.get(name)
            if model is None:
                model = self._models[name] = _Model(config)
                log.info("model %s: now configured, served from %s", name, config.base_path)
            elif model.config != config:
                async with model.lock:
                    if model.config.base_path != config.base_path:
                        for version in sorted(model.serving):
                            await self._unload(model, version)
                        model.seen, model.failed = {}, {}
                    model.config = config
                log.info(
                    "model %s: configuration changed (%s, policy %s)", name, config.base_path, config.policy.describe()
                )
        # Two scans a short moment apart, as at start: a version folder must be stable over two scans to load.
        await self.refresh()
        await asyncio.sleep(min(self._poll_interval_s, 0.5))
        await self.refresh()

    # ---- version management ------------------------------------------------------------------------

    async def _reconcile(self, model: _Model) -> None:
        scan = await asyncio.to_thread(scan_version_folders, model.config.base_path)
        stable = {version for version, files in scan.items() if model.seen.get(version) == files}
        model.seen = scan
        for version, files in list(model.failed.items()):
            if scan.get(version) != files:
                del model.failed[version]  # its files changed: worth another try
        desired = model.config.policy.select(stable - set(model.failed))
        for version in sorted(desired - set(model.serving)):
            await self._load(model, version, scan[version])
        serving = set(model.serving)
        keep = desired & serving
        if not keep and serving & set(scan):
            # Nothing the policy wants could be loaded: keep serving the newest version still on disk.
            keep = {max(serving & set(scan))}
        for version in sorted(serving - keep):
            await self._unload(model, version)
        self._metrics.available_versions.labels(model.config.name).set(len(model.serving))

    async def _load(self, model: _Model, version: int, files: Fingerprint) -> None:
        name = model.config.name
        path = model.config.base_path / str(version)
        model.statuses[version] = VersionStatus(version, State.LOADING)
        log.info("model %s: loading version %d from %s", name, version, path)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            servable = await loop.run_in_executor(self._loader, self._load_and_warm_up, name, version, path)
        except Exception as exc:  # any failure to load is recorded in the status and logged, never raised
            code = getattr(exc, "code", Code.UNKNOWN)
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            model.statuses[version] = VersionStatus(version, State.END, Code(code), message)
            model.failed[version] = files
            self._metrics.version_loads.labels(name, "failed").inc()
            log.error("model %s: version %d refused: %s", name, version, message, exc_info=not hasattr(exc, "code"))
            return
        model.serving = {**model.serving, version: Lease(servable)}
        model.statuses[version] = VersionStatus(version, State.AVAILABLE)
        self._metrics.version_loads.labels(name, "available").inc()
        self._metrics.load_duration.labels(name).observe(time.monotonic() - started)
        log.info("model %s: version %d AVAILABLE (%.2f s)", name, version, time.monotonic() - started)

    def _load_and_warm_up(self, name: str, version: int, path: Path) -> Servable:
        servable = self._factory(name, version, path)
        if self._warmup:
            requests = servable.warm_up()
            log.info("model %s: version %d warmed up with %d request(s)", name, version, requests)
        return servable

    async def _unload(self, model: _Model, version: int) -> None:
        lease = model.serving[version]
        model.statuses[version] = VersionStatus(version, State.UNLOADING)
        model.serving = {v: held for v, held in model.serving.items() if v != version}  # no new requests
        if lease.in_flight:
            try:
                async with asyncio.timeout(self._unload_grace_s):
                    await lease.idle.wait()
            except TimeoutError:
                log.warning(
                    "model %s: version %d unloaded with %d request(s) still running",
                    model.config.name,
                    version,
                    lease.in_flight,
                )
        await asyncio.get_running_loop().run_in_executor(self._loader, lease.servable.close)
        model.statuses[version] = VersionStatus(version, State.END)
        log.info("model %s: version %d unloaded", model.config.name, version)

    # ---- queries -----------------------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        return list(self._models)

    def is_ready(self, name: str) -> bool:
        model = self._models.get(name)
        return model is not None and bool(model.serving)

    def _model(self, name: str, *, for_status: bool = False) -> _Model:
        model = self._models.get(name)
        if model is None:
            if for_status:
                raise not_found(f"Could not find any versions of model {name}")
            raise not_found(f"Servable not found for request: Latest({name})")
        return model

    def _label_version(self, model: _Model, label: str) -> int:
        if label not in model.config.labels:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return model.config.labels[label]

    def find(self, name: str, version: int | None = None, label: str | None = None) -> Lease:
        """The lease answering a request for ``name`` at ``version`` / ``label`` / the latest version."""
        model = self._models.get(name)
        if version is None and label:
            if model is None:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = self._label_version(model, label)
        serving = model.serving if model is not None else {}
        if version is None:
            if not serving:
                raise not_found(f"Servable not found for request: Latest({name})")
            return serving[max(serving)]
        if version not in serving:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return serving[version]

    @asynccontextmanager
    async def lease(self, name: str, version: int | None = None, label: str | None = None) -> AsyncIterator[Lease]:
        """Hold a version for one request: it stays loaded until the block ends."""
        held = self.find(name, version, label)
        held.in_flight += 1
        held.idle.clear()
        self._metrics.requests_in_flight.inc()
        try:
            yield held
        finally:
            held.in_flight -= 1
            self._metrics.requests_in_flight.dec()
            if held.in_flight == 0:
                held.idle.set()

    async def run(
        self,
        lease: Lease,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Iterable[str] = (),
    ) -> dict[str, np.ndarray]:
        """Run a signature of a leased version in the inference thread pool."""
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._inference, lease.servable.run, signature_name, inputs, tuple(output_filter)
            )
        finally:
            self._metrics.inference_duration.labels(lease.servable.model_name).observe(time.perf_counter() - started)

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """TF Serving's GetModelStatus: every version this server has handled, newest first."""
        model = self._model(name, for_status=True)
        if label:
            version = self._label_version(model, label)
        if version is not None:
            if version not in model.statuses:
                raise not_found(f"Could not find version {version} of model {name}")
            return [model.statuses[version]]
        if not model.statuses:
            raise not_found(f"Could not find any versions of model {name}")
        return [model.statuses[v] for v in sorted(model.statuses, reverse=True)]
