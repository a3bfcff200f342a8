"""One trace from a device's MQTT message to its result, exported over OTLP by the services as processes.

The device publishes a picture over MQTT 5 with a ``traceparent`` user property; ingest and the inference
gateway run as their own processes (``edgeloop ingest``, ``edgeloop inference-gateway``) on the real Kafka and
Mosquitto, with ``EDGELOOP_OTLP_ENDPOINT`` pointing at an OTLP/HTTP receiver. What must hold, as an operator
would look in their collector: every span of the picture's journey is in the device's trace, in a chain
(device → ingest's receive → the gateway's processing → the result the device gets back, whose ``traceparent``
names the gateway's span).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from edgeloop.device import DeviceResult, DeviceSimulator, SimulatorConfig, format_result
from edgeloop_common.mqtt_asyncio import AsyncMqttClient, ReceivedMessage
from edgeloop_common.tracing import new_traceparent, trace_id

from tests.e2e.edge_site import BIN, ServiceProcess, node_group_model_server
from tests.helpers import free_port
from tests.observability.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.tf]

SPAN_KIND_SERVER, SPAN_KIND_CONSUMER = 2, 5


def _service(what: str, command: str, env: dict[str, str], port_variable: str, logs: Path) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        what,
        [str(BIN / "edgeloop"), command],
        {**env, port_variable: str(port)},
        f"http://127.0.0.1:{port}",
        logs / f"{command}.log",
    )


async def _wait_for(condition, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def test_a_pictures_trace_runs_from_the_device_through_ingest_and_the_gateway_back_to_the_device(
    tmp_path: Path,
    kafka_topics: str,
    kafka_bootstrap: str,
    mqtt_broker: tuple[str, int],
    trained_model_base: Path,
    trained_model_name: str,
    catdog_train_dir: Path,
) -> None:
    site, device = f"trace-{uuid.uuid4().hex[:8]}", "cam-1"
    photo = sorted((catdog_train_dir / "cat").glob("*.jpg"))[0].read_bytes()
    logs = tmp_path / "logs"
    logs.mkdir()
    with OtlpReceiver() as receiver:
        common = {
            "EDGELOOP_MODE": "distributed",
            "EDGELOOP_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "EDGELOOP_MQTT_HOST": mqtt_broker[0],
            "EDGELOOP_MQTT_PORT": str(mqtt_broker[1]),
            "EDGELOOP_TOPIC_PREFIX": kafka_topics,
            "EDGELOOP_DATA_DIR": str(tmp_path / "data"),
            "EDGELOOP_OTLP_ENDPOINT": receiver.endpoint,
            "EDGELOOP_LOG_LEVEL": "INFO",
        }
        model_server = node_group_model_server(trained_model_base, trained_model_name, logs, "cloud").start(wait=False)
        ingest = _service(
            "ingest",
            "ingest",
            {
                **common,
                "EDGELOOP_DATABASE_URL": f"sqlite:///{tmp_path / 'ingest.sqlite3'}",
                "EDGELOOP_INGEST_SITES": site,
                "EDGELOOP_INGEST_MQTT_CLIENT_ID": f"ingest-{site}",
            },
            "EDGELOOP_INGEST_HTTP_PORT",
            logs,
        ).start(wait=False)
        gateway = _service(
            "inference gateway",
            "inference-gateway",
            {
                **common,
                "EDGELOOP_INFERENCE_GATEWAY_MODEL_SERVER_REST_URL": model_server.url,
                "EDGELOOP_INFERENCE_GATEWAY_MODEL_NAME": trained_model_name,
            },
            "EDGELOOP_INFERENCE_GATEWAY_HTTP_PORT",
            logs,
        )
        results: asyncio.Queue[ReceivedMessage] = asyncio.Queue()
        camera = AsyncMqttClient(
            *mqtt_broker, client_id=f"{site}-{device}", protocol="5", on_receive=results.put_nowait
        )
        try:
            model_server.wait_ready()
            ingest.wait_ready()
            gateway.start()
            await camera.connect()
            await camera.subscribe(f"dt/edgeloop/{site}/{device}/result")

            device_traceparent = new_traceparent()
            await camera.publish(
                f"dt/edgeloop/{site}/{device}/image", photo, user_properties={"traceparent": device_traceparent}
            )
            result = await asyncio.wait_for(results.get(), 60)

            # The device gets its trace back with the result.
            the_trace = trace_id(device_traceparent)
            result_traceparent = result.user_properties.get("traceparent")
            assert trace_id(result_traceparent) == the_trace, result.user_properties

            def chain() -> list[ReceivedSpan] | None:
                spans = receiver.trace(the_trace or "")
                names = {span.name for span in spans}
                wanted = {"mqtt receive", f"{kafka_topics}edgeloop.images.received.v1 process"}
                return spans if wanted <= names else None

            spans = await _wait_for(chain, 30, "ingest's and the gateway's spans at the OTLP receiver")

            # The simulated camera does the same with --trace: the trace id it prints is the one the services
            # exported spans under.
            photos = tmp_path / "photos"
            photos.mkdir()
            (photos / "cat.jpg").write_bytes(photo)
            printed: list[DeviceResult] = []
            simulator = DeviceSimulator(
                SimulatorConfig(
                    images_dir=photos, site=site, device="cam-2", count=1, mqtt_host=mqtt_broker[0],
                    mqtt_port=mqtt_broker[1], trace=True, timeout_s=60,
                ),
                on_result=printed.append,
            )  # fmt: skip
            summary = await simulator.run()
            assert summary.results == 1 and printed[0].trace_id, summary.describe()
            assert "trace " + printed[0].trace_id in format_result(printed[0])
            await _wait_for(
                lambda: (
                    {span.service_name for span in receiver.trace(printed[0].trace_id or "")}
                    >= {"ingest", "inference-gateway"}
                ),
                30,
                "the simulated camera's trace at the OTLP receiver",
            )
        finally:
            await camera.close()
            for process in (gateway, ingest, model_server):
                process.stop()

    received = next(span for span in spans if span.name == "mqtt receive")
    processed = next(span for span in spans if span.name.endswith("edgeloop.images.received.v1 process"))
    device_span_id = device_traceparent.split("-")[2]
    assert received.service_name == "ingest" and received.kind == SPAN_KIND_CONSUMER
    assert received.parent_span_id == device_span_id, "ingest continues the device's span"
    assert received.attributes["messaging.destination.name"] == f"dt/edgeloop/{site}/{device}/image"
    assert processed.service_name == "inference-gateway" and processed.kind == SPAN_KIND_CONSUMER
    assert processed.parent_span_id == received.span_id, "the gateway continues ingest's span (Kafka header)"
    assert result_traceparent.split("-")[2] == processed.span_id, "the result names the gateway's span"
