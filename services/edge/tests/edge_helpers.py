"""What the edge agent's tests share (imported by name: this folder is on the test path)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
from edgeloop_edge.settings import Settings
from fastapi import FastAPI

AgentFactory = Callable[..., AbstractAsyncContextManager["RunningAgent"]]


class RunningAgent:
    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge")

    async def status(self) -> dict[str, Any]:
        response = await self.http.get("/v1/status")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body
