"""The real registry, ingest and trainer apps in one process around one in-process bus (integration tests).

Each app is started through its own lifespan, as uvicorn would, and reached
through httpx over ASGI. Also run as a script by the crash test: it starts the
registry and the trainer, asks for one training and waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.registry_client import RegistryClient
from edgeloop_common.settings import CommonSettings
from edgeloop_trainer.adapters.samples_client import SamplesClient
from edgeloop_trainer.settings import Settings
from fastapi import FastAPI

MODEL = "catdog"


@dataclass
class Loop:
    bus: InProcessBus
    registry: httpx.AsyncClient
    ingest: httpx.AsyncClient | None
    trainer: httpx.AsyncClient
    trainer_app: FastAPI


def trainer_settings(home: Path, seed: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "seed_data_dir": seed,
        "model_base": home / "models",
        "models": MODEL,
        "epochs": 1,
        "incremental_epochs": 1,
        "backbone": "small-cnn",
        "image_size": 32,
        "batch_size": 16,
        "eval_fraction": 0.25,
        "common": CommonSettings(mode="standalone", data_dir=home / "data"),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def _serving(stack: AsyncExitStack, app: FastAPI, name: str) -> AsyncIterator[httpx.AsyncClient]:
    await stack.enter_async_context(app.router.lifespan_context(app))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}", timeout=30)
    yield await stack.enter_async_context(client)


@asynccontextmanager
async def running_loop(settings: Settings, *, with_ingest: bool = True) -> AsyncIterator[Loop]:
    from edgeloop_registry.app import create_app as create_registry
    from edgeloop_registry.settings import Settings as RegistrySettings
    from edgeloop_trainer.app import create_app as create_trainer

    if not with_ingest:
        settings = settings.model_copy(update={"ingest_url": ""})
    bus = InProcessBus(source="edgeloop")
    await bus.start()
    async with AsyncExitStack() as stack:
        registry_app = create_registry(RegistrySettings(common=settings.common), bus=bus)
        registry = await stack.enter_async_context(_serving(stack, registry_app, "registry"))
        ingest = None
        if with_ingest:
            from edgeloop_ingest.app import create_app as create_ingest
            from edgeloop_ingest.settings import Settings as IngestSettings

            ingest_app = create_ingest(IngestSettings(mqtt_enabled=False, common=settings.common), bus=bus)
            ingest = await stack.enter_async_context(_serving(stack, ingest_app, "ingest"))
        trainer_app = create_trainer(
            settings,
            bus=bus,
            registry=RegistryClient(registry),
            samples=SamplesClient(ingest) if ingest is not None else None,
        )
        trainer = await stack.enter_async_context(_serving(stack, trainer_app, "trainer"))
        yield Loop(bus, registry, ingest, trainer, trainer_app)
    await bus.stop()


async def _train_until_killed(home: Path, seed: Path) -> None:
    async with running_loop(trainer_settings(home, seed), with_ingest=False) as loop:
        answer = await loop.trainer.post("/v1/trainings", json={"model_name": MODEL, "requested_by": "crash-test"})
        print(answer.json()["run_id"], flush=True)
        await asyncio.sleep(600)  # the test kills this process during the export


if __name__ == "__main__":
    asyncio.run(_train_until_killed(Path(sys.argv[1]), Path(sys.argv[2])))
