"""A picture ingested by one service is classified by another that reads it from S3, as on two nodes.

Ingest and the inference gateway run as their own processes (``edgeloop ingest``, ``edgeloop inference-gateway``)
with data folders of their own, on the real Kafka and Mosquitto, both with ``EDGELOOP_BLOB_STORE=s3`` pointed at
the SeaweedFS of ``edgeloop infra up`` (a bucket of this test's own). A camera publishes a photo over MQTT and
gets the gateway's answer back: the sample's blob is an ``s3://`` object, whose bytes are the photo, and no
picture was written to either service's disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from edgeloop_common.blobs.s3 import S3BlobStore
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, ReceivedMessage
from edgeloop_common.settings import CommonSettings

from tests.e2e.edge_site import BIN, ServiceProcess, node_group_model_server
from tests.helpers import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.s3, pytest.mark.tf]


def _service(command: str, env: dict[str, str], port_variable: str, logs: Path) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        command,
        [str(BIN / "edgeloop"), command],
        {**env, port_variable: str(port)},
        f"http://127.0.0.1:{port}",
        logs / f"{command}.log",
    )


def _files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


async def test_a_picture_ingest_stored_in_s3_is_classified_by_the_gateway_reading_it_from_there(
    tmp_path: Path,
    kafka_topics: str,
    kafka_bootstrap: str,
    mqtt_broker: tuple[str, int],
    s3_environment: dict[str, str],
    trained_model_base: Path,
    trained_model_name: str,
    catdog_train_dir: Path,
) -> None:
    site, device = f"s3-{uuid.uuid4().hex[:8]}", "cam-1"
    bucket = f"test-loop-{uuid.uuid4().hex[:10]}"
    photo = sorted((catdog_train_dir / "cat").glob("*.jpg"))[0].read_bytes()
    sha256 = hashlib.sha256(photo).hexdigest()
    logs = tmp_path / "logs"
    logs.mkdir()
    common = {
        **s3_environment,
        "EDGELOOP_BLOB_STORE": "s3",
        "EDGELOOP_S3_BUCKET": bucket,
        "EDGELOOP_MODE": "distributed",
        "EDGELOOP_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "EDGELOOP_MQTT_HOST": mqtt_broker[0],
        "EDGELOOP_MQTT_PORT": str(mqtt_broker[1]),
        "EDGELOOP_TOPIC_PREFIX": kafka_topics,
    }
    ingest_data, gateway_data = tmp_path / "ingest-node", tmp_path / "gateway-node"
    model_server = node_group_model_server(trained_model_base, trained_model_name, logs, "cloud").start(wait=False)
    ingest = _service(
        "ingest",
        {
            **common,
            "EDGELOOP_DATA_DIR": str(ingest_data),
            "EDGELOOP_DATABASE_URL": f"sqlite:///{tmp_path / 'ingest.sqlite3'}",
            "EDGELOOP_INGEST_SITES": site,
            "EDGELOOP_INGEST_MQTT_CLIENT_ID": f"ingest-{site}",
        },
        "EDGELOOP_INGEST_HTTP_PORT",
        logs,
    ).start(wait=False)
    gateway = _service(
        "inference-gateway",
        {
            **common,
            "EDGELOOP_DATA_DIR": str(gateway_data),
            "EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_REST_URL": model_server.url,
            "EDGELOOP_INFERENCE_GATEWAY_MODEL_NAME": trained_model_name,
        },
        "EDGELOOP_INFERENCE_GATEWAY_HTTP_PORT",
        logs,
    )
    results: asyncio.Queue[ReceivedMessage] = asyncio.Queue()
    camera = AsyncMqttClient(*mqtt_broker, client_id=f"{site}-{device}", protocol="5", on_receive=results.put_nowait)
    values: dict[str, Any] = {name.removeprefix("EDGELOOP_").lower(): value for name, value in common.items()}
    store = S3BlobStore.from_settings(CommonSettings.model_validate(values))
    try:
        model_server.wait_ready()
        ingest.wait_ready()  # its readiness puts the bucket in place
        gateway.start()
        await camera.connect()
        await camera.subscribe(f"dt/edgeloop/{site}/{device}/result")
        await camera.publish(f"dt/edgeloop/{site}/{device}/image", photo)
        result = await asyncio.wait_for(results.get(), 60)
        samples = ingest.get(f"/v1/samples?site_id={site}")["samples"]
    finally:
        await camera.close()
        for process in (gateway, ingest, model_server):
            process.stop()

    try:
        assert b'"top_label"' in result.payload, (result.payload, gateway.output())
        [sample] = samples
        assert sample["sha256"] == sha256
        assert sample["blob_uri"] == f"s3://{bucket}/sha256/{sha256[:2]}/{sha256}"
        assert store.get(sha256) == photo
        assert not [path for path in _files_under(ingest_data) if path.name == sha256], "a picture on ingest's disk"
        assert not [path for path in _files_under(gateway_data) if path.name == sha256]
    finally:
        for item in store.client.list_objects_v2(Bucket=bucket).get("Contents", []):
            store.client.delete_object(Bucket=bucket, Key=item["Key"])
        store.client.delete_bucket(Bucket=bucket)
