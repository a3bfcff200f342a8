"""Canary rollouts on the local target, on real components: a lite model server for site-a and one for its canary
(LOCAL_NODE_GROUP_SERVERS, LOCAL_CANARY_SERVERS), the gateway classifying ImageReceived from Kafka with a real model
server, the deployer reading the gateway's InferenceCompleted from Kafka. A good version completes; a version that
answers with low confidence, and one whose predict fails, are stopped at the canary and rolled back with the reason.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from edgeloop_common.bus import EventContext
from edgeloop_common.bus.kafka import KafkaBus
from edgeloop_common.events import BlobRef, DeploymentUpdated, ImageReceived, InferenceCompleted, in_canary_share
from edgeloop_common.settings import CommonSettings
from edgeloop_deployer.app import create_app as create_deployer
from edgeloop_deployer.settings import Settings as DeployerSettings
from edgeloop_inference_gateway.app import create_app as create_gateway
from edgeloop_inference_gateway.settings import Settings as GatewaySettings
from edgeloop_model_server.embedded import RunningServer, serve_in_thread

from tests.helpers import eventually
from tests.model_fixtures import copy_model_base, export_constant_model, lite_server_settings

pytestmark = [pytest.mark.tf, pytest.mark.kafka, pytest.mark.slow]

GROUP = "site-a"
WEIGHT = 0.4


@pytest.fixture
def model_base(trained_model_base: Path, trained_model_name: str, tmp_path: Path) -> Path:
    base = copy_model_base(trained_model_base, tmp_path)
    # Good: sure of its answers. (The tiny trained version 1 is not: its mean confidence is about 0.55, too close to
    # a bad version's for a test that must not depend on how the photos happen to score.)
    export_constant_model(base / trained_model_name / "2", (0.97, 0.03))
    export_constant_model(base / trained_model_name / "3", (0.52, 0.48))  # answers, barely sure of anything
    export_constant_model(base / trained_model_name / "4", (0.9, 0.1), fail=True)  # predict fails
    return base


@pytest.fixture
def servers(model_base: Path, trained_model_name: str, tmp_path: Path) -> Iterator[dict[str, RunningServer]]:
    """The gateway's server (every version), site-a's and site-a's canary's (the version linked there)."""
    folders = {"gateway": model_base, GROUP: tmp_path / "node-groups" / GROUP, "canary": tmp_path / "canary" / GROUP}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    policies = {"gateway": "all", GROUP: "latest:1", "canary": "latest:1"}
    started: dict[str, RunningServer] = {}
    contexts = []
    try:
        for name, folder in folders.items():
            settings = lite_server_settings(
                folder, trained_model_name, model_version_policy=policies[name], poll_interval_s=0.2, warmup=False
            )
            context = serve_in_thread(settings)
            started[name] = context.__enter__()
            contexts.append(context)
        yield started
    finally:
        for context in reversed(contexts):
            context.__exit__(None, None, None)


@pytest.fixture
def refs(catdog_dir: Path, tmp_path: Path) -> list[BlobRef]:
    """A dozen photos in a blob folder (what ingest stores), for the camera to send again and again."""
    folder = tmp_path / "blobs"
    folder.mkdir()
    photos = sorted((catdog_dir / "train").rglob("*.jpg"))[:12]
    return [store_blob(folder, photo.read_bytes()) for photo in photos]


class Updates:
    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.seen: list[DeploymentUpdated] = []
        self.bus = KafkaBus(bootstrap_servers=bootstrap, source="observer", topic_prefix=prefix)
        self.bus.subscribe(DeploymentUpdated, self._updated, group="observer")
        self.answers: list[InferenceCompleted] = []
        self.bus.subscribe(InferenceCompleted, self._answered, group="observer-answers")

    async def _updated(self, event: DeploymentUpdated, context: EventContext) -> None:
        self.seen.append(event)

    async def _answered(self, event: InferenceCompleted, context: EventContext) -> None:
        self.answers.append(event)

    def last(self) -> DeploymentUpdated | None:
        return self.seen[-1] if self.seen else None

    def ended(self, version: int) -> DeploymentUpdated | None:
        ends = [e for e in self.seen if e.desired_version == version and e.phase in ("ready", "rolled_back", "failed")]
        return ends[-1] if ends else None


@pytest.fixture
async def updates(kafka_bootstrap: str, kafka_topics: str) -> AsyncIterator[Updates]:
    observer = Updates(kafka_bootstrap, kafka_topics)
    await observer.bus.start()
    yield observer
    await observer.bus.stop()


async def test_canaries_on_real_model_servers_through_the_gateway_and_kafka(
    servers: dict[str, RunningServer],
    model_base: Path,
    trained_model_name: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topics: str,
    refs: list[BlobRef],
    updates: Updates,
) -> None:
    model = trained_model_name
    common = CommonSettings(
        mode="distributed",
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=kafka_topics,
        database_url=f"sqlite:///{tmp_path / 'deployer.sqlite3'}",
        data_dir=tmp_path,
    )
    deployer = create_deployer(
        DeployerSettings(
            common=common,
            target="local",
            node_groups=GROUP,
            local_node_group_servers=f"{GROUP}={servers[GROUP].rest_url}",
            local_canary_servers=f"{GROUP}={servers['canary'].rest_url}",
            local_models_root=tmp_path / "node-groups",
            local_canary_models_root=tmp_path / "canary",
            local_model_base=model_base,
            rollout_timeout_s=60,
            poll_interval_s=0.1,
            canary_weight=WEIGHT,
            canary_window_s=3,
            canary_settle_s=1,
            canary_min_samples=8,
            canary_max_error_rate=0.05,
            canary_max_latency_ratio=20,  # one CPU core shared by many: latency is not what this test judges
            canary_check_interval_s=0.2,
        )
    )
    gateway = create_gateway(
        GatewaySettings(
            common=common,
            model_name=model,
            mqtt_results=False,
            max_wait_ms=2.0,
            model_server_rest_url=servers["gateway"].rest_url,
            metadata_refresh_s=0.5,
        )
    )
    camera = KafkaBus(bootstrap_servers=kafka_bootstrap, source="ingest", topic_prefix=kafka_topics)

    async def promote_and_send(version: int) -> DeploymentUpdated:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=deployer), base_url="http://d") as http:
            body = {"model_name": model, "version": version, "node_group": GROUP}
            assert (await http.post("/v1/deployments", json=body)).status_code == 202
        await eventually(
            lambda: any(e.canary_status == "watching" and e.canary_version == version for e in updates.seen),
            what=f"the canary of {version} watching",
            timeout_s=60,
        )
        sent = 0
        while updates.ended(version) is None and sent < 400:  # a camera at site-a, until the canary is decided
            sample = uuid.uuid4().hex
            await camera.publish(image_event(refs[sent % len(refs)], site=GROUP, sample_id=sample))
            sent += 1
            if sent % 10 == 0:
                await eventually(lambda n=sent - 5: len(updates.answers) >= n, what="the answers", timeout_s=30)
        await eventually(lambda: updates.ended(version) is not None, what=f"version {version} decided", timeout_s=60)
        ended = updates.ended(version)
        assert ended is not None
        return ended

    await camera.start()
    try:
        async with deployer.router.lifespan_context(deployer), gateway.router.lifespan_context(gateway):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=deployer), base_url="http://d") as http:
                first = {"model_name": model, "version": 1, "node_group": GROUP}
                assert (await http.post("/v1/deployments", json=first)).status_code == 202
            await eventually(lambda: updates.ended(1) is not None, what="version 1 ready", timeout_s=60)

            good = await promote_and_send(2)
            answered_during_2 = list(updates.answers)
            unsure = await promote_and_send(3)
            broken = await promote_and_send(4)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=deployer), base_url="http://d") as http:
                canary = (await http.get(f"/v1/deployments/{model}/{GROUP}/canary")).json()
                deployment = (await http.get(f"/v1/deployments/{model}/{GROUP}")).json()
    finally:
        await camera.stop()

    assert (good.phase, good.actual_version, good.canary_status) == ("ready", 2, "passed"), good.reason
    assert good.endpoint == servers[GROUP].rest_url
    # The gateway split the samples by the weight: those in the canary's share were answered by version 2.
    start, end = _watched(updates, 2)
    during = [a for a in answered_during_2 if start <= a.completed_at <= end]
    in_share = [a for a in during if in_canary_share(a.sample_id, WEIGHT)]
    assert abs(len(in_share) / len(during) - WEIGHT) < 0.25, (len(in_share), len(during))  # a few dozen samples
    assert during and all(a.model_version == 2 for a in in_share)
    assert all(a.model_version == 1 for a in during if not in_canary_share(a.sample_id, WEIGHT))

    assert (unsure.phase, unsure.desired_version, unsure.actual_version) == ("rolled_back", 3, 2), unsure.reason
    assert unsure.reason.startswith("canary of version 3 failed: mean confidence 0.520 against ")
    assert unsure.canary_status == "failed"

    assert (broken.phase, broken.desired_version, broken.actual_version) == ("rolled_back", 4, 2), broken.reason
    assert broken.reason.startswith("canary of version 4 failed: error rate 1.00 (")
    assert (canary["status"], canary["version"], canary["reason"]) == ("rolled_back", 4, broken.reason)
    assert (deployment["actual_version"], deployment["phase"], deployment["reason"]) == (
        2,
        "rolled_back",
        broken.reason,
    )
    # The site's own server never left version 2; the canary's folder is empty again.
    assert sorted(p.name for p in (tmp_path / "node-groups" / GROUP / model).iterdir()) == ["1", "2"]
    assert list((tmp_path / "canary" / GROUP / model).iterdir()) == []


def store_blob(directory: Path, data: bytes) -> BlobRef:
    digest = hashlib.sha256(data).hexdigest()
    (directory / digest).write_bytes(data)
    return BlobRef(
        sha256=digest, uri=(directory / digest).resolve().as_uri(), content_type="image/jpeg", size_bytes=len(data)
    )


def image_event(ref: BlobRef, *, site: str, sample_id: str) -> ImageReceived:
    return ImageReceived(
        sample_id=sample_id,
        device_id="cam-1",
        site_id=site,
        received_at=datetime.now(UTC),
        image=ref,
        format="jpeg",
        width=64,
        height=48,
        ingress="mqtt",
    )


def _watched(updates: Updates, version: int) -> tuple[datetime, datetime]:
    """From the canary's window (the gateway has the split by then) to its verdict (the split ends)."""
    watching = next(e for e in updates.seen if e.canary_status == "watching" and e.canary_version == version)
    verdict = next(e for e in updates.seen if e.desired_version == version and e.canary_status in ("passed", "failed"))
    return watching.updated_at + timedelta(seconds=1), verdict.updated_at
