"""Fixtures of the end-to-end tests: the Kubernetes control plane (reused from tests/kube), photos, the first model."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kube"))  # tests/kube/conftest.py imports kube_helpers

from kube_helpers import wait_for
from kubernetes import client

from tests.kube.conftest import kube_api, kube_cluster  # noqa: F401  (session fixtures, shared with tests/kube)


@pytest.fixture(scope="module")
def module_namespace(kube_api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:  # noqa: F811
    """A fresh namespace for one test module (its services outlive a single test), deleted afterwards."""
    core = client.CoreV1Api(kube_api)
    slug = re.sub(r"[^a-z0-9]+", "-", request.module.__name__.lower()).strip("-")[:30].strip("-")
    name = f"e2e-{slug}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"edgeloop.io/test": "1"})))
    wait_for(
        lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
        f"ServiceAccount default in namespace {name}",
    )
    yield name
    core.delete_namespace(name)
