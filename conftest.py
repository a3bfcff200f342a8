"""Fixtures shared by every test in the repository.

Integration tests run against the real brokers that ``edgeloop infra up``
starts (``make test`` does that first). Where a broker cannot be reached the
test fails with the reason; it is never skipped silently.
Addresses can be overridden with the usual ``EDGELOOP_*`` variables.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import edgeloop_common  # noqa: F401  (first: loads psycopg's OpenSSL before any TensorFlow; see its __init__)
import pytest

from tests.helpers import delete_topics, fresh_postgres_schema

pytest_plugins = ["tests.model_fixtures"]

REPO_ROOT = Path(__file__).resolve().parent
SHARED_DATASETS = Path(os.environ.get("EDGELOOP_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host or address, int(port)) if port.isdigit() else (address, default_port)


def _require_listening(what: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        pytest.fail(
            f"{what} is not reachable at {host}:{port} ({exc}); start it with `edgeloop infra up`", pytrace=False
        )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("EDGELOOP_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    _require_listening("Kafka", *_host_port(bootstrap.split(",")[0], 9092))
    return bootstrap


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    host = os.environ.get("EDGELOOP_MQTT_HOST", "127.0.0.1")
    port = int(os.environ.get("EDGELOOP_MQTT_PORT", "1883"))
    _require_listening("Mosquitto", host, port)
    return host, port


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("EDGELOOP_DATABASE_URL", "postgresql+psycopg://edgeloop:edgeloop@127.0.0.1:5432/edgeloop")
    _require_listening("PostgreSQL", "127.0.0.1", int(os.environ.get("EDGELOOP_POSTGRES_PORT", "5432")))
    return url


@pytest.fixture(scope="session")
def s3_environment() -> dict[str, str]:
    """The EDGELOOP_* settings of the S3 blob store: the environment's when EDGELOOP_S3_ENDPOINT_URL is set, else
    those `edgeloop infra up` wrote for its SeaweedFS (.edgeloop/seaweedfs/s3.env)."""
    names = ("BLOB_STORE", "S3_ENDPOINT_URL", "S3_BUCKET", "S3_REGION", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")
    if os.environ.get("EDGELOOP_S3_ENDPOINT_URL"):
        found = {f"EDGELOOP_{name}": os.environ.get(f"EDGELOOP_{name}", "") for name in names}
        found["EDGELOOP_BLOB_STORE"] = "s3"
    else:
        env_file = REPO_ROOT / ".edgeloop" / "seaweedfs" / "s3.env"
        if not env_file.is_file():
            pytest.fail(f"no S3 settings: {env_file} is written by `edgeloop infra up` (SeaweedFS)", pytrace=False)
        pairs = (line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        found = {name: value for name, value in pairs}
    _require_listening("The S3 blob store", *_host_port(found["EDGELOOP_S3_ENDPOINT_URL"].split("://")[-1], 443))
    return found


@pytest.fixture
def topic_prefix() -> str:
    """A fresh Kafka topic namespace per test (the bus prefixes every topic with it)."""
    return f"test-{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def kafka_topics(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[str]:
    """The test's topic prefix; its topics are deleted afterwards so the shared broker does not fill up."""
    yield topic_prefix
    await delete_topics(kafka_bootstrap, topic_prefix)


@pytest.fixture
def fresh_postgres_url(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The shared database with a schema of this test only on the search path (named after the test module,
    so a leftover says whose it is), dropped afterwards."""
    module = re.sub(r"\W", "_", request.module.__name__.rpartition(".")[2])[:40]
    with fresh_postgres_schema(postgres_url, prefix=module) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sqlite_or_postgres_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A test that takes it runs twice: on a fresh SQLite file, and on the real PostgreSQL in a schema of its own
    (``fresh_postgres_url``: a module may override it, the registry's shares one schema per module)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'database.sqlite3'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture(scope="session")
def catdog_dir() -> Path:
    path = SHARED_DATASETS / "catdog"
    if not path.is_dir():
        pytest.fail(f"the cat/dog photos are expected at {path} (../shared/datasets/catdog)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def catdog_train_dir(catdog_dir: Path) -> Path:
    return catdog_dir / "train"


@pytest.fixture(scope="session")
def catdog_captures_dir(catdog_dir: Path) -> Path:
    return catdog_dir / "captures"
