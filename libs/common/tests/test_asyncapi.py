"""docs/asyncapi.yaml is generated from the contract code; these tests fail when the two drift apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from common_samples import SAMPLE_EVENTS
from edgeloop_common import asyncapi, topics
from edgeloop_common.bus.codec import encode
from edgeloop_common.events import ALL_EVENTS, Event

REPO_ROOT = Path(__file__).resolve().parents[3]
CHECKED_IN = REPO_ROOT / "docs" / "asyncapi.yaml"
REGENERATE = "regenerate it: .venv/bin/python -m edgeloop_common.asyncapi > docs/asyncapi.yaml"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CHECKED_IN.read_text())
    return loaded


def test_checked_in_document_is_what_the_code_generates() -> None:
    assert CHECKED_IN.read_text() == asyncapi.render(), f"docs/asyncapi.yaml is stale; {REGENERATE}"


def test_check_command_tells_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text(CHECKED_IN.read_text().replace("edgeloop.images.received.v1", "edgeloop.images.v0"))
    command = [sys.executable, "-m", "edgeloop_common.asyncapi", "--check"]

    fresh = subprocess.run([*command, str(CHECKED_IN)], capture_output=True, text=True, check=False)
    outdated = subprocess.run([*command, str(stale)], capture_output=True, text=True, check=False)

    assert fresh.returncode == 0, fresh.stderr
    assert outdated.returncode == 1
    assert "edgeloop.images.v0" in outdated.stderr and "is stale" in outdated.stderr


def test_rendering_is_deterministic() -> None:
    assert asyncapi.render() == asyncapi.render()


def test_every_kafka_topic_is_a_channel_with_its_event_schema(document: dict[str, Any]) -> None:
    channels = {channel["address"]: channel for channel in document["channels"].values()}
    assert set(topics.ALL_KAFKA_TOPICS) <= set(channels)
    for event_cls in ALL_EVENTS:
        channel = channels[event_cls.topic]
        assert channel["bindings"]["kafka"]["topic"] == event_cls.topic
        [message_ref] = channel["messages"].values()
        message = _resolve(document, message_ref["$ref"])
        assert message["headers"]["properties"]["ce_type"]["const"] == event_cls.event_type
        payload = _resolve(document, message["payload"]["$ref"])
        expected = event_cls.model_json_schema(ref_template=asyncapi.SCHEMA_REF)
        expected.pop("$defs", None)
        assert payload == expected, f"{event_cls.__name__}'s schema in the document differs from the model"


def test_every_mqtt_topic_is_a_channel(document: dict[str, Any]) -> None:
    addresses = {channel["address"] for channel in document["channels"].values()}
    templates = {topics.MQTT_IMAGE, topics.MQTT_TELEMETRY, topics.MQTT_RESULT, topics.MQTT_CAPTURE}
    assert templates <= addresses
    image = next(c for c in document["channels"].values() if c["address"] == topics.MQTT_IMAGE)
    media_types = {_resolve(document, ref["$ref"])["contentType"] for ref in image["messages"].values()}
    assert media_types == {"image/jpeg", "image/png"}


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = list(_refs(document))
    assert len(refs) > 50
    for ref in refs:
        assert _resolve(document, ref) is not None, ref


@pytest.mark.parametrize("event", list(SAMPLE_EVENTS.values()), ids=lambda event: type(event).__name__)
def test_documented_headers_match_the_records_the_codec_writes(document: dict[str, Any], event: Event) -> None:
    headers_schema = document["components"]["messages"][type(event).__name__]["headers"]
    written = {name for name, _ in encode(event, source="ingest").headers}
    assert written <= set(headers_schema["properties"]), "a header the document does not describe"
    assert set(headers_schema["required"]) <= written, "a required header the codec does not write"


def _refs(node: Any) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references expected, got {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node
