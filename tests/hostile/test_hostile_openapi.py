"""Schemathesis over every service's OpenAPI document: no 5xx, and every answer as the document says.

Each service runs in standalone mode (``openapi_services.py``) and is called in-process over ASGI. Every
operation gets requests that fit its document (positive) and requests that break it (negative). The sweep is
bounded for ``make test``: ``EDGELOOP_API_SWEEP_EXAMPLES`` examples per operation and mode (default 20),
derandomized (the same examples on every run, so a failure is reproducible), no example database. Run it longer
with, e.g., ``EDGELOOP_API_SWEEP_EXAMPLES=500 EDGELOOP_API_SWEEP_SEED=1 .venv/bin/python -m pytest
tests/hostile/test_hostile_openapi.py`` (a seed makes it draw new examples; docs/hostile-input.md).

API tokens are on, as deployed (``EDGELOOP_API_AUTH=required``): every call carries an admin's token, so every
operation is reached and its answers, the 401/403 the document now states included, are held to the document.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from edgeloop_common.api_auth import add_token
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from openapi_services import SERVICES, SweptService
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("EDGELOOP_API_SWEEP_EXAMPLES", "20"))
SEED = os.environ.get("EDGELOOP_API_SWEEP_SEED")


@schemathesis.check
def no_crash_and_no_undocumented_5xx(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """Never a 500 (an unhandled error); another 5xx only where the operation documents it (a 503 "the model server
    cannot be reached" is the designed answer while a dependency is away, and says so)."""
    if response.status_code == 500 or (
        response.status_code >= 500 and str(response.status_code) not in case.operation.responses.status_codes
    ):
        return not_a_server_error(ctx, response, case)
    return None


SWEEP_TOKEN_ID = "sweep-admin"
ANSWERED_WITH_TOKEN: list[int] = []  # statuses of the calls that carried the admin's token (the sweep reached them)


@schemathesis.check
def the_token_decides(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """The admin's token is never refused (else the sweep would no longer reach the operation); a request the
    negative mode sent without it, or with a token of its own making, gets 401."""
    sent = response.request.headers.get("Authorization") or response.request.headers.get("authorization") or ""
    ours = sent.startswith(f"Bearer elt_{SWEEP_TOKEN_ID}_")
    if ours and response.status_code in (401, 403):
        raise AssertionError(f"the admin's token was refused ({response.status_code}): {response.text[:200]}")
    if ours:
        ANSWERED_WITH_TOKEN.append(response.status_code)
    if not ours and response.status_code != 401:
        raise AssertionError(f"answered {response.status_code} to a request without a valid token ({sent[:40]!r})")
    return None


# What every answer is held to: no 500 and no undocumented 5xx; a status the operation documents; the documented
# media type; a body that fits the documented schema. The answers every route shares (400 for a body that cannot be
# parsed, 422 in both of its shapes, 503) are documented on every route by edgeloop_common.http_errors.
CHECKS = [
    no_crash_and_no_undocumented_5xx,
    the_token_decides,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def lifespans() -> Iterator[None]:
    """Schemathesis starts each app's lifespan on first use and keeps it; this stops them with the test."""
    yield
    asgi.shutdown_lifespans()


@pytest.fixture
def admin_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Auth required in every app built in the test (read from the environment), and an admin's token."""
    store = tmp_path / "api-tokens.json"
    _, token = add_token(store, "api sweep", "admin", token_id=SWEEP_TOKEN_ID)
    monkeypatch.setenv("EDGELOOP_API_AUTH", "required")
    monkeypatch.setenv("EDGELOOP_API_TOKENS_FILE", str(store))
    return {"Authorization": f"Bearer {token}"}


def _sweep(schema: Any, mode: GenerationMode, headers: dict[str, str]) -> list[str]:
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            derandomize=SEED is None,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        if SEED is not None:
            call = seed(int(SEED))(call)
        try:
            call()
        except Unsatisfiable:  # nothing to break in this operation (no parameters, no body): nothing to try
            continue
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - each failure is collected and reported
            failures.append(f"{mode.value} {operation.label}: {exc}")
    return failures


def _marks(service: SweptService) -> list[pytest.MarkDecorator]:
    return [pytest.mark.mqtt] * ("mqtt_broker" in service.needs) + [pytest.mark.tf] * ("model_base" in service.needs)


@pytest.mark.parametrize("service", [pytest.param(s, id=s.name, marks=_marks(s)) for s in SERVICES])
def test_no_operation_answers_5xx_or_off_its_document(
    service: SweptService,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    lifespans: None,
    admin_headers: dict[str, str],
) -> None:
    extras: dict[str, Any] = {}
    if "mqtt_broker" in service.needs:
        extras["mqtt_broker"] = request.getfixturevalue("mqtt_broker")
    if "model_base" in service.needs:
        extras["model_base"] = request.getfixturevalue("trained_model_base")
        extras["model_name"] = request.getfixturevalue("trained_model_name")
    app = service.build(tmp_path / "data", **extras)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ANSWERED_WITH_TOKEN.clear()
    failures = _sweep(schema, GenerationMode.POSITIVE, admin_headers) + _sweep(
        schema, GenerationMode.NEGATIVE, admin_headers
    )
    assert len(ANSWERED_WITH_TOKEN) >= len(list(schema.get_all_operations())), "the sweep did not carry the token"
    assert not failures, f"{service.name}: {len(failures)} operation(s) failed\n\n" + "\n\n".join(failures)
