"""Version numbers beyond the database's 32-bit integer column are refused with a reason, never a 500.

Found by the schemathesis sweep (tests/hostile): on PostgreSQL, ``POST /v1/models/O/promotions`` with
``"version": 1428956442241496`` and ``POST /v1/models/{name}/versions`` with ``"version": 75319708566`` answered 500
(the number overflowed the INTEGER column). The API now bounds every version number to 1..2**31-1 (422 with the
reason), and numbering the next version past the bound is a 409.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from edgeloop_common.bus.inprocess import InProcessBus
from edgeloop_common.settings import CommonSettings
from edgeloop_registry.app import create_app
from edgeloop_registry.service import MAX_VERSION_NUMBER
from edgeloop_registry.settings import Settings
from registry_testing import version_body


@pytest.fixture
async def client(sqlite_or_postgres_url: str) -> AsyncIterator[httpx.AsyncClient]:
    bus = InProcessBus(source="registry")
    await bus.start()
    settings = Settings(common=CommonSettings(mode="distributed", database_url=sqlite_or_postgres_url))
    app = create_app(settings, bus=bus)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry") as http,
    ):
        yield http
    await bus.stop()


def _says_the_bound(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    assert str(MAX_VERSION_NUMBER) in response.text


async def test_a_version_number_past_the_integer_column_is_422_with_the_bound(client: httpx.AsyncClient) -> None:
    registered = await client.post("/v1/models/classifier/versions", json=version_body(0.8, version=75319708566))
    _says_the_bound(registered)
    promoted = await client.post(
        "/v1/models/O/promotions", json={"version": 1428956442241496, "reason": "sweep", "actor": "schemathesis"}
    )
    _says_the_bound(promoted)
    _says_the_bound(await client.get("/v1/models/classifier/versions/75319708566"))
    _says_the_bound(await client.patch("/v1/models/classifier/versions/75319708566", json={"status": "archived"}))
    alias = {"version": 2**40, "reason": "sweep", "actor": "schemathesis"}
    _says_the_bound(await client.put("/v1/models/classifier/aliases/production", json=alias))
    rollback = {"to_version": 2**40, "reason": "sweep", "actor": "schemathesis"}
    _says_the_bound(await client.post("/v1/models/classifier/rollback", json=rollback))
    assert (await client.get("/v1/models")).json() == []  # nothing half-stored


async def test_the_highest_number_is_stored_and_the_next_one_is_a_conflict(client: httpx.AsyncClient) -> None:
    highest = await client.post("/v1/models/classifier/versions", json=version_body(0.8, version=MAX_VERSION_NUMBER))
    assert highest.status_code == 201, highest.text
    assert (await client.get(f"/v1/models/classifier/versions/{MAX_VERSION_NUMBER}")).json()["version"] == (
        MAX_VERSION_NUMBER
    )
    following = await client.post("/v1/models/classifier/versions", json=version_body(0.8, version=None))
    assert following.status_code == 409, following.text
    assert "used up its version numbers" in following.json()["detail"]
