"""The console's tests' stage: the real services in standalone mode (``edgeloop.system.System``: registry, ingest,
the inference gateway with the lite model server serving the session's small trained model, drift, trainer,
deployer; one in-process bus, SQLite, local folders, the real Mosquitto) and the console in front of them, all on
an event loop of their own in a background thread, so that a module shares one stack and the tests (httpx,
Selenium) stay synchronous. The gateway's miner takes every picture as a hard example (confidence threshold 1.0),
so each one uploaded joins the labeling queue.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
from edgeloop.system import EmbeddedServer, System, SystemConfig
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.settings import CommonSettings
from edgeloop_console.app import create_app
from edgeloop_console.settings import Settings

from tests.helpers import free_port

T = TypeVar("T")

MODEL = "catdog-console"
CLASSES = ("cat", "dog")
ADMIN_TOKEN = "console-test-token-" + uuid.uuid4().hex[:12]
SERVICES = ("registry", "ingest", "inference-gateway", "drift", "trainer", "deployer")  # and the model server
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class ConsoleStack:
    def __init__(self, root: Path, mqtt_broker: tuple[str, int], trained_model: Path) -> None:
        """``trained_model``: a SavedModel version folder (the session's ``trained_model_base/<name>/1``), served
        as version 1 of MODEL."""
        self.root = root
        shutil.copytree(trained_model, root / "models" / MODEL / "1")
        self.mqtt_broker = mqtt_broker
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="console-stack", daemon=True)
        self.urls: dict[str, str] = {}
        self.console_url = ""

    # -- life -------------------------------------------------------------------------------------------------

    def start(self) -> ConsoleStack:
        self.thread.start()
        try:
            self.run(self._start(), timeout_s=180)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            try:
                self.run(self._stop(), timeout_s=60)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(timeout=10)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    async def _start(self) -> None:
        host, port = self.mqtt_broker
        common = CommonSettings(mode="standalone", data_dir=self.root / "data", mqtt_host=host, mqtt_port=port)
        self.bus = InProcessBus(source="console-test")
        self.system = System(
            SystemConfig(
                model_name=MODEL,
                model_base=self.root / "models",
                common=lambda service: common,
                bus=self.bus,
                settings={
                    "ingest": {"mqtt_session_expiry_s": 60},  # leave no lasting session on the shared broker
                    "inference-gateway": {
                        "hard_example_miner": "confidence",
                        "hard_example_confidence_threshold": 1.0,  # every picture is worth a label here
                    },
                    "trainer": {"retrain_every_labels": 0},
                    "deployer": {"node_groups": "site-a,site-b", "rollout_timeout_s": 3.0},
                },
            )
        )
        await self.bus.start()
        await self.system.start_model_server()
        await self.system.start(SERVICES)
        self.urls = dict(self.system.urls)
        settings = Settings(
            admin_token=ADMIN_TOKEN,
            ingest_url=self.urls["ingest"],
            registry_url=self.urls["registry"],
            trainer_url=self.urls["trainer"],
            drift_url=self.urls["drift"],
            deployer_url=self.urls["deployer"],
            model_name=MODEL,
        )
        port = free_port()
        self.console = EmbeddedServer("console", create_app(settings), "127.0.0.1", port)
        await self.console.start()
        self.console_url = self.console.url

    async def _stop(self) -> None:
        if getattr(self, "console", None) is not None:
            await self.console.stop()
        if getattr(self, "system", None) is not None:
            await self.system.stop()
        if getattr(self, "bus", None) is not None:
            await self.bus.stop()

    # -- arranging --------------------------------------------------------------------------------------------

    def register_versions(self) -> None:
        """Versions 1-3 of MODEL on one evaluation set (accuracy 0.80, 0.90, 0.60); version 1 in production."""
        with httpx.Client(base_url=self.urls["registry"], timeout=10) as registry:
            for number, accuracy in ((1, 0.80), (2, 0.90), (3, 0.60)):
                body = {
                    "version": number,
                    "artifact_uri": f"file:///nowhere/{MODEL}/{number}",
                    "metrics": {
                        "accuracy": accuracy,
                        "train_counts": {"cat": 40 + number, "dog": 38 + number},
                        "eval_counts": {"cat": 10, "dog": 10},
                        "evaluation_set_id": "evalset-console-test",
                    },
                    "lineage": {
                        "parent_version": number - 1 or None,
                        "parameters": {"backbone": "efficientnet-lite0", "epochs": 3},
                    },
                    "train_duration_s": 12.5 * number,
                }
                response = registry.post(f"/v1/models/{MODEL}/versions", json=body)
                assert response.status_code == 201, response.text
            first = {"version": 1, "reason": "first model", "actor": "test"}
            response = registry.post(f"/v1/models/{MODEL}/promotions", json=first)
            assert response.status_code == 200 and response.json()["promoted"], response.text

    def upload(self, photo: Path, *, site: str, device: str) -> dict[str, Any]:
        with httpx.Client(base_url=self.urls["ingest"], timeout=10) as ingest:
            where = {"site_id": site, "device_id": device}
            response = ingest.post("/v1/samples", params=where, content=photo.read_bytes())
            assert response.status_code == 201, response.text
            return response.json()  # type: ignore[no-any-return]

    def queue(self, site: str) -> list[dict[str, Any]]:
        with httpx.Client(base_url=self.urls["ingest"], timeout=10) as ingest:
            return ingest.get("/v1/labeling/queue", params={"site_id": site}).json()["samples"]  # type: ignore[no-any-return]

    def wait_for_queue(self, site: str, size: int, timeout_s: float = 15) -> None:
        """Until ``size`` hard examples wait at ``site`` (the gateway answered every picture)."""
        deadline = time.monotonic() + timeout_s
        while len(self.queue(site)) != size:
            assert time.monotonic() < deadline, f"{size} hard examples at {site} not reached in {timeout_s:g}s"
            time.sleep(0.1)

    def production(self) -> int | None:
        with httpx.Client(base_url=self.urls["registry"], timeout=10) as registry:
            return registry.get(f"/v1/models/{MODEL}").json()["production_version"]  # type: ignore[no-any-return]


def photos(catdog_train_dir: Path, count: int) -> list[Path]:
    found = sorted(path for path in catdog_train_dir.rglob("*") if path.suffix.lower() in {".jpg", ".jpeg", ".png"})
    assert len(found) >= count, f"expected {count} photos under {catdog_train_dir}"
    return found[:count]


def signed_in(console_url: str) -> tuple[httpx.Client, str]:
    """An httpx client with a session, and the session's CSRF token (read off a page, as a browser would)."""
    client = httpx.Client(base_url=console_url, timeout=20)
    response = client.post("/signin", data={"token": ADMIN_TOKEN, "next": "/"})
    assert response.status_code == 303, response.text
    page = client.get("/")
    match = CSRF.search(page.text)
    assert match, page.text[:500]
    return client, match.group(1)
