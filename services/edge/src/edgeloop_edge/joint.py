"""Joint inference: a hard example offered to the deep cloud model, within a time budget.

The deep model's front is the cloud inference gateway's ``POST /v1/classify`` (raw picture bytes; ``site`` and
``device`` as query parameters, so the gateway applies the site's route). The device gets the cloud's answer only
if it arrives within the budget. After a failure the link is taken as down for ``link_retry_s``: hard examples get
the edge's answer at once instead of each waiting out the budget while the cloud is away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import httpx
from edgeloop_common.events import JointOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloudAnswer:
    outcome: JointOutcome
    latency_ms: float
    model_name: str | None = None
    model_version: int | None = None
    scores: dict[str, float] | None = None
    detail: str = ""


class CloudClassifier:
    def __init__(
        self,
        base_url: str,
        *,
        budget_s: float,
        link_retry_s: float,
        http: httpx.AsyncClient | None = None,
        auth: httpx.Auth | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.budget_s = budget_s
        self.link_retry_s = link_retry_s
        # The budget bounds each call; the client's own timeout only backs it up.
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(max(5.0, budget_s * 2)), auth=auth)
        self._owns_http = http is None
        self._down_until = 0.0

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    @property
    def link_down(self) -> bool:
        return time.monotonic() < self._down_until

    async def classify(self, image: bytes, *, site_id: str, device_id: str) -> CloudAnswer:
        """The cloud's answer within the budget, or why not (never raises)."""
        started = time.perf_counter()
        if self.link_down:
            return CloudAnswer("cloud_error", 0.0, detail="the cloud was unreachable moments ago")
        try:
            async with asyncio.timeout(self.budget_s):
                response = await self._http.post(
                    f"{self.base_url}/v1/classify",
                    params={"site": site_id, "device": device_id},
                    content=image,
                    headers={"content-type": "application/octet-stream"},
                )
        except TimeoutError:
            return CloudAnswer("timeout", _ms_since(started), detail=f"no answer within {self.budget_s * 1000:.0f} ms")
        except httpx.HTTPError as exc:
            self._down_until = time.monotonic() + self.link_retry_s
            return CloudAnswer("cloud_error", _ms_since(started), detail=f"unreachable: {exc!s}"[:300])
        if response.status_code != 200:
            if response.status_code >= 500:
                self._down_until = time.monotonic() + self.link_retry_s
            return CloudAnswer(
                "cloud_error", _ms_since(started), detail=f"HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            body = response.json()
            scores = {str(label): float(score) for label, score in body["scores"].items()}
            return CloudAnswer(
                "cloud",
                _ms_since(started),
                model_name=str(body["model_name"]),
                model_version=int(body["model_version"]),
                scores=scores,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return CloudAnswer("cloud_error", _ms_since(started), detail=f"unreadable answer: {exc!s}"[:300])


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
