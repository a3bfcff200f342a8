"""Benchmark: the console's pages over a sample store of 50,000 pictures.

    .venv/bin/python bench/console.py --samples 50000 --requests 40 --database sqlite
    .venv/bin/python bench/console.py --samples 50000 --requests 40 --database postgresql

1. **fill**: ingest's sample store (SQLite in a fresh folder, or a fresh schema of the local PostgreSQL) gets
   ``--samples`` rows through its repository's table (a bench fixture: one multi-row INSERT per 5,000, not the
   bridge): 4 sites x 5 devices, received over the last 7 days, each answered (70% at the edge, 30% in the cloud,
   10% hard examples), 20% labeled (85% of those as answered).
2. **start**: registry, ingest (on that store, MQTT off), drift, trainer and deployer in this process
   (``edgeloop.system.System``, one in-process bus, like ``make demo``), two versions in the registry, and the
   console as **a process of its own** (``edgeloop-console``), so its memory is its own.
3. **measure**: signed in, each page is asked for ``--requests`` times one after the other (after 3 warm-ups):
   the overview (24 hours and 7 days), models, pictures (the first page, and a deep page: the cursor of the
   middle sample), labeling, devices, drift. Prints p50/p95/max per page (target p95 <= 300 ms), and the console
   process's resident memory before and after (peak: VmHWM), to show it never holds the sample list.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO = Path(__file__).resolve().parent.parent
TARGET_P95_MS = 300.0
MODEL = "edgeloop-classifier"
TOKEN = "bench-console-" + uuid.uuid4().hex[:16]
SITES = tuple(f"site-{name}" for name in ("a", "b", "c", "d"))
DEVICES = tuple(f"cam-{n}" for n in range(1, 6))
CHUNK = 5000
T = TypeVar("T")


# -- the sample store ---------------------------------------------------------------------------------------------


@contextmanager
def database(kind: str, root: Path, postgres_url: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{root / 'ingest.sqlite3'}"
        return
    from sqlalchemy import create_engine, make_url, text

    schema = f"bench_console_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(postgres_url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def fill(url: str, count: int, seed: int = 7) -> str:
    """``count`` answered samples; returns the cursor (as ingest encodes it) of the middle one in page order."""
    from edgeloop_ingest.adapters.samples import SqlSampleRepository, create_sql_engine, samples
    from edgeloop_ingest.labeling import Cursor
    from sqlalchemy import insert, select

    engine = create_sql_engine(url)
    SqlSampleRepository(engine)  # the schema, by ingest's migrations
    rng = random.Random(seed)
    now = datetime.now(UTC)
    span_s = 7 * 24 * 3600
    started = time.perf_counter()
    rows = []
    for _ in range(count):
        site, device = rng.choice(SITES), rng.choice(DEVICES)
        received = now - timedelta(seconds=rng.uniform(0, span_s))
        cat = rng.random()
        top = "cat" if cat >= 0.5 else "dog"
        confidence = max(cat, 1 - cat)
        hard = rng.random() < 0.10
        labeled = rng.random() < 0.20
        right = rng.random() < 0.85
        rows.append(
            {
                "sample_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "device_id": device,
                "site_id": site,
                "received_at": received,
                "sha256": f"{rng.getrandbits(256):064x}",
                "size_bytes": 20480,
                "format": "jpeg",
                "width": 320,
                "height": 240,
                "ingress": "mqtt",
                "mqtt_topic": f"dt/edgeloop/{site}/{device}/image",
                "blob_uri": "file:///bench/none",
                "predicted_label": top,
                "confidence": round(confidence, 4),
                "scores": {"cat": round(cat, 4), "dog": round(1 - cat, 4)},
                "model_name": MODEL,
                "model_version": 2,
                "hard_example": hard,
                "hard_example_reason": "confidence below 0.80" if hard else None,
                "predicted_at": received + timedelta(milliseconds=30),
                "served_by": "edge" if rng.random() < 0.7 else "cloud",
                "label": (top if right else ("dog" if top == "cat" else "cat")) if labeled else None,
                "labeled_by": "bench" if labeled else None,
                "labeled_at": received + timedelta(minutes=5) if labeled else None,
            }
        )
        if len(rows) == CHUNK:
            with engine.begin() as connection:
                connection.execute(insert(samples), rows)
            rows = []
    if rows:
        with engine.begin() as connection:
            connection.execute(insert(samples), rows)
    order = (samples.c.received_at, samples.c.sample_id)
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":  # what autovacuum does soon after a bulk insert
            connection.exec_driver_sql("ANALYZE ingest_samples")
        # SQLite: no ANALYZE, as ingest never runs one (its planner then picks the covering indexes)
        middle = connection.execute(select(*order).order_by(*order).offset(count // 2).limit(1)).one()
    engine.dispose()
    print(f"filled {count:,} samples in {time.perf_counter() - started:.1f} s ({url.split(':')[0]})", flush=True)
    received_at = middle[0] if middle[0].tzinfo else middle[0].replace(tzinfo=UTC)
    return Cursor(received_at=received_at, sample_id=middle[1]).encode()


# -- the services, in a thread of their own -----------------------------------------------------------------------


class Services:
    def __init__(self, root: Path, ingest_url: str) -> None:
        self.root = root
        self.ingest_url = ingest_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-services", daemon=True)
        self.urls: dict[str, str] = {}

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 180) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def start(self) -> Services:
        self.thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        from edgeloop.system import System, SystemConfig
        from edgeloop_common.bus.inprocess import InProcessBus
        from edgeloop_common.settings import CommonSettings

        def common(service: str) -> CommonSettings:
            if service == "ingest":
                return CommonSettings(mode="distributed", data_dir=self.root / "data", database_url=self.ingest_url)
            return CommonSettings(mode="standalone", data_dir=self.root / "data")

        self.bus = InProcessBus(source="bench-console")
        self.system = System(
            SystemConfig(
                model_name=MODEL,
                model_base=self.root / "models",
                common=common,
                bus=self.bus,
                settings={
                    "ingest": {"mqtt_enabled": False},
                    "trainer": {"retrain_every_labels": 0},
                    "deployer": {"node_groups": ",".join(SITES), "rollout_timeout_s": 3.0},
                },
            )
        )
        await self.bus.start()
        await self.system.start_model_server()
        await self.system.start(("registry", "ingest", "drift", "trainer", "deployer"))
        self.urls = dict(self.system.urls)

    def stop(self) -> None:
        async def _stop() -> None:
            await self.system.stop()
            await self.bus.stop()

        try:
            self.run(_stop(), timeout_s=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    def register_versions(self) -> None:
        with httpx.Client(base_url=self.urls["registry"], timeout=10) as registry:
            for number, accuracy in ((1, 0.91), (2, 0.94)):
                body = {
                    "version": number,
                    "artifact_uri": f"file:///nowhere/{MODEL}/{number}",
                    "metrics": {
                        "accuracy": accuracy,
                        "train_counts": {"cat": 200, "dog": 190},
                        "eval_counts": {"cat": 50, "dog": 50},
                        "evaluation_set_id": "bench",
                    },
                    "lineage": {"parent_version": number - 1 or None, "parameters": {"backbone": "efficientnet-lite0"}},
                }
                registry.post(f"/v1/models/{MODEL}/versions", json=body).raise_for_status()
            registry.post(
                f"/v1/models/{MODEL}/promotions", json={"version": 2, "reason": "bench", "actor": "bench"}
            ).raise_for_status()


# -- the console, a process of its own ----------------------------------------------------------------------------


def start_console(urls: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EDGELOOP_CONSOLE_ADMIN_TOKEN": TOKEN,
        "EDGELOOP_CONSOLE_HTTP_PORT": str(port),
        "EDGELOOP_CONSOLE_INGEST_URL": urls["ingest"],
        "EDGELOOP_CONSOLE_REGISTRY_URL": urls["registry"],
        "EDGELOOP_CONSOLE_TRAINER_URL": urls["trainer"],
        "EDGELOOP_CONSOLE_DRIFT_URL": urls["drift"],
        "EDGELOOP_CONSOLE_DEPLOYER_URL": urls["deployer"],
        "EDGELOOP_CONSOLE_MODEL_NAME": MODEL,
    }
    program = Path(sys.executable).parent / "edgeloop-console"
    with log.open("wb") as out:
        process = subprocess.Popen([str(program)], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"the console exited ({process.returncode}): {log.read_text()[-2000:]}")
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the console did not answer /healthz in 60 s")


def memory_kib(pid: int) -> dict[str, int]:
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0])
    return figures


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(console: str, pages: dict[str, str], requests: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {}
    with httpx.Client(base_url=console, timeout=30) as client:
        signed = client.post("/signin", data={"token": TOKEN, "next": "/"})
        assert signed.status_code == 303, signed.text[:500]
        for name, path in pages.items():
            for _ in range(3):  # warm-up
                response = client.get(path)
                assert response.status_code == 200 and "Not available" not in response.text, (name, response.text[:800])
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (name, response.status_code)
            timings[name] = times
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "EDGELOOP_DATABASE_URL", "postgresql+psycopg://edgeloop:edgeloop@127.0.0.1:5432/edgeloop"
        ),
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="edgeloop-bench-console-"))
    console: subprocess.Popen[bytes] | None = None
    services: Services | None = None
    try:
        with database(args.database, root, args.postgres_url) as url:
            deep_cursor = fill(url, args.samples)
            services = Services(root, url).start()
            services.register_versions()
            port = free_port()
            console = start_console(services.urls, port, root / "console.log")
            before = memory_kib(console.pid)
            pages = {
                "overview (24 h)": "/",
                "overview (7 days)": "/?window=7d",
                "models": "/models",
                "pictures, first page": "/pictures",
                "pictures, deep page (cursor)": f"/pictures?after={deep_cursor}",
                "pictures, site + edge filter": "/pictures?site=site-b&served=edge",
                "labeling": "/labeling",
                "devices": "/devices",
                "drift and training": "/drift",
            }
            load = os.getloadavg()
            timings = measure(f"http://127.0.0.1:{port}", pages, args.requests)
            after = memory_kib(console.pid)
            print(
                f"\n{args.samples:,} samples ({args.database}), {args.requests} requests per page, "
                f"load average {load[0]:.1f} at the start"
            )
            print(f"{'page':32} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
            worst = 0.0
            for name, times in timings.items():
                p95 = percentile(times, 0.95)
                worst = max(worst, p95)
                print(f"{name:32} {statistics.median(times):8.1f} {p95:8.1f} {max(times):8.1f}")
            print(
                f"console RSS: {before['VmRSS'] / 1024:.1f} MiB after start, {after['VmRSS'] / 1024:.1f} MiB after, "
                f"peak {after['VmHWM'] / 1024:.1f} MiB"
            )
            verdict = "pass" if worst <= TARGET_P95_MS else "miss"
            print(f"worst p95 {worst:.1f} ms (target <= {TARGET_P95_MS:.0f} ms): {verdict}")
            return 0 if verdict == "pass" else 1
    finally:
        if console is not None:
            console.terminate()
            try:
                console.wait(timeout=10)
            except subprocess.TimeoutExpired:
                console.kill()
        if services is not None:
            services.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
