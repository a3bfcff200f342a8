"""Faults, swept (issue 13, item 5), bounded for ``make test``: the distributed path on brokers of its own, a device
publishing while a consumer is SIGKILLed, Kafka is stopped, Mosquitto or PostgreSQL restarted, a service paused past
its Kafka session. Every acknowledged picture must be stored, classified, its prediction stored and its result
delivered; nothing twice; every consumer group caught up. ``bench/chaos.py`` runs the same at full size.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import (
    CONSUMERS,
    KAFKA_SESSION_TIMEOUT_S,
    MODEL_NAME,
    REPO_ROOT,
    Counts,
    Pipeline,
    Scenario,
    chaos_pipeline,
    image_pool,
    kill_consumers,
    pause_service,
    run_scenario,
    stop_broker,
)

pytestmark = [pytest.mark.chaos, pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.postgres, pytest.mark.slow]

IMAGES = 150
RATE = 15.0


@pytest.fixture(scope="module")
def pipeline(trained_model_base: Path, trained_model_name: str) -> Iterator[Pipeline]:
    work_dir = REPO_ROOT / ".edgeloop" / "chaos" / f"test-{uuid.uuid4().hex[:8]}"
    models = work_dir / "models"
    shutil.copytree(trained_model_base / trained_model_name, models / MODEL_NAME)
    with chaos_pipeline(work_dir, models) as running:
        yield running


def assert_nothing_lost_nor_doubled(counts: Counts, pipeline: Pipeline) -> None:
    print(counts.line())
    print(counts.details())
    if counts.lost_total or any(counts.lags.values()) or counts.recovery_s is None:
        # The work folder goes with the module: what the services said is kept in the failure's captured output.
        print(pipeline.log_tails())
    assert counts.acknowledged == counts.published, counts.details()
    assert counts.lost_total == 0, counts.details()
    assert counts.duplicate_effects == 0, counts.details()
    assert not any(counts.lags.values()), counts.details()
    assert counts.dead_letters == 0, counts.details()
    assert counts.recovery_s is not None, counts.details()


async def test_every_consumer_sigkilled_loses_and_doubles_nothing(pipeline: Pipeline) -> None:
    scenario = Scenario("sigkill-each-consumer", kill_consumers(1), images=200, rate=RATE)
    counts = await run_scenario(pipeline, scenario, seed=13, pool=image_pool())
    assert len(counts.windows) == len(CONSUMERS)
    assert_nothing_lost_nor_doubled(counts, pipeline)


async def test_kafka_stopped_and_restarted(pipeline: Pipeline) -> None:
    scenario = Scenario("kafka-stopped-8s", stop_broker("kafka", 8.0), images=IMAGES, rate=RATE)
    assert_nothing_lost_nor_doubled(await run_scenario(pipeline, scenario, pool=image_pool()), pipeline)


async def test_mosquitto_restarted(pipeline: Pipeline) -> None:
    scenario = Scenario("mosquitto-restarted", stop_broker("mosquitto", 0.0), images=IMAGES, rate=RATE)
    assert_nothing_lost_nor_doubled(await run_scenario(pipeline, scenario, pool=image_pool()), pipeline)


async def test_postgres_restarted(pipeline: Pipeline) -> None:
    scenario = Scenario("postgres-restarted", stop_broker("postgres", 0.0), images=IMAGES, rate=RATE)
    assert_nothing_lost_nor_doubled(await run_scenario(pipeline, scenario, pool=image_pool()), pipeline)


async def test_gateway_paused_past_its_session_timeout(pipeline: Pipeline) -> None:
    pause = KAFKA_SESSION_TIMEOUT_S + 5.0
    scenario = Scenario("gateway-sigstop", pause_service("inference-gateway", pause), images=IMAGES, rate=RATE)
    assert_nothing_lost_nor_doubled(await run_scenario(pipeline, scenario, pool=image_pool()), pipeline)
