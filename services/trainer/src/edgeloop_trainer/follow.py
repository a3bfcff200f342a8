"""``edgeloop train --trainer URL``: ask the trainer service for a run and follow it with a progress bar."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx
from edgeloop_common.api_auth import service_auth
from edgeloop_common.settings import CommonSettings
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

TERMINAL_STATES = ("succeeded", "failed")


class TrainerUnavailableError(Exception):
    """The trainer service could not be reached or refused the request."""


def request_and_follow(
    trainer_url: str, model_name: str, *, requested_by: str, detail: str, console: Console, poll_s: float = 1.0
) -> dict[str, Any]:
    """POST /v1/trainings, then poll the run until it ends; the final run as JSON."""
    with httpx.Client(base_url=trainer_url, timeout=30, auth=service_auth(CommonSettings())) as client:
        accepted = _call(
            client,
            "POST",
            "/v1/trainings",
            {"model_name": model_name, "reason": "manual", "requested_by": requested_by, "detail": detail},
        )
        run_id = accepted["run_id"]
        joined = " (joined a run already queued)" if accepted.get("coalesced") else ""
        console.print(f"training run [bold]{run_id}[/] of {model_name}{joined}")
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
        )
        with bar:
            task = bar.add_task("queued", total=100)
            while True:
                run = _call(client, "GET", f"/v1/trainings/{quote(run_id, safe='')}", None)
                progress = run.get("progress") or {}
                bar.update(task, completed=100 * float(progress.get("fraction", 0.0)), description=_describe(run))
                if run["state"] in TERMINAL_STATES:
                    return run
                time.sleep(poll_s)


def print_outcome(run: dict[str, Any], console: Console) -> None:
    if run["state"] != "succeeded":
        console.print(f"[red]training run {run['run_id']} failed:[/] {run.get('error')}")
        return
    result = run["result"]
    metrics = result["metrics"]
    baseline = metrics.get("baseline")
    versus = f" (production version {baseline['version']}: {baseline['accuracy']:.3f})" if baseline else ""
    console.print(
        f"{run['model_name']} version [bold]{result['version']}[/] registered: accuracy {metrics['accuracy']:.3f}"
        f"{versus} on evaluation set {result['evaluation_set_id']}, snapshot {result['snapshot_id']}"
    )
    promotion = result["promotion"]
    verdict = "[green]promoted[/]" if promotion["promoted"] else "[yellow]not promoted[/]"
    console.print(f"{verdict}: {promotion['decision']}")


def _describe(run: dict[str, Any]) -> str:
    progress = run.get("progress") or {}
    stage = progress.get("stage") or run["state"]
    if stage == "training" and progress.get("epochs"):
        return f"training epoch {progress['epoch']}/{progress['epochs']} {progress.get('message', '')}".rstrip()
    return str(stage)


def _call(client: httpx.Client, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise TrainerUnavailableError(f"trainer unreachable at {client.base_url}: {exc}") from exc
    if not response.is_success:
        raise TrainerUnavailableError(
            f"trainer refused {method} {path} ({response.status_code}): {response.text[:300]}"
        )
    answer: dict[str, Any] = response.json()
    return answer
