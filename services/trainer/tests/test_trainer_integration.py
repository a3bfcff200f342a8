"""The trainer with the real registry (SQLite, migrations, outbox) and the real ingest, in one process.

Labels given in ingest -> SampleLabeled -> TrainingRequested(new_labels) ->
snapshot -> training (32 px, one epoch) -> version registered with its
metrics, lineage and drift reference -> promotion decided by the registry.
And a trainer killed mid-export: nothing registered, nothing visible, and the
run is retried at the next start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import httpx
import pytest
from edgeloop_common.events import ModelPromoted, ModelRegistered, TrainingRequested
from trainer_loop import MODEL, running_loop, trainer_settings
from trainer_testing import catdog_subset, version_folders, wait_for

pytestmark = [pytest.mark.tf, pytest.mark.slow]


async def run_to_end(trainer: httpx.AsyncClient, run_id: str, timeout_s: float = 120) -> dict:  # type: ignore[type-arg]
    async def ended() -> bool:
        return (await trainer.get(f"/v1/trainings/{run_id}")).json()["state"] in ("succeeded", "failed")

    await wait_for(ended, timeout_s=timeout_s)
    body: dict = (await trainer.get(f"/v1/trainings/{run_id}")).json()  # type: ignore[type-arg]
    return body


def run_error(home: Path, run_id: str) -> str | None:
    with sqlite3.connect(home / "data" / "trainer.sqlite3") as connection:
        row = connection.execute("SELECT state, error FROM trainings WHERE run_id = ?", (run_id,)).fetchone()
    return f"run {run_id}: {row}"


async def upload_and_label(ingest: httpx.AsyncClient, photos: list[tuple[Path, str]]) -> list[str]:
    sample_ids = []
    for photo, label in photos:
        uploaded = await ingest.post(
            "/v1/samples", params={"device_id": "cam-1", "site_id": "site-a"}, content=photo.read_bytes()
        )
        assert uploaded.status_code == 201, uploaded.text
        sample_id = uploaded.json()["sample_id"]
        labeled = await ingest.put(f"/v1/samples/{sample_id}/label", json={"label": label, "labeled_by": "tester"})
        assert labeled.status_code == 200, labeled.text
        sample_ids.append(sample_id)
    return sample_ids


async def test_new_labels_train_register_and_promote_a_version(tmp_path: Path, catdog_train_dir: Path) -> None:
    seed = catdog_subset(catdog_train_dir, tmp_path / "seed", per_class=20)
    labeled = [(sorted((catdog_train_dir / name).iterdir())[-1 - i], name) for name in ("cat", "dog") for i in range(2)]
    settings = trainer_settings(tmp_path, seed, retrain_every_labels=4)

    async with running_loop(settings) as loop:
        assert loop.ingest is not None
        sample_ids = await upload_and_label(loop.ingest, labeled)
        await wait_for(lambda: len(loop.bus.events_of(TrainingRequested)) == 1)

        async def listed_runs() -> list[dict]:  # type: ignore[type-arg]
            runs: list[dict] = (await loop.trainer.get("/v1/trainings")).json()["trainings"]  # type: ignore[type-arg]
            return runs

        # the request is on the bus before the trainer has consumed it and recorded its run
        await wait_for(listed_runs)
        first_id = (await listed_runs())[0]["run_id"]
        first = await run_to_end(loop.trainer, first_id)

        manual = await loop.trainer.post("/v1/trainings", json={"model_name": MODEL, "requested_by": "alice"})
        second = await run_to_end(loop.trainer, manual.json()["run_id"])

        version_1 = (await loop.registry.get(f"/v1/models/{MODEL}/versions/1")).json()
        version_2 = (await loop.registry.get(f"/v1/models/{MODEL}/versions/2")).json()
        aliases = (await loop.registry.get(f"/v1/models/{MODEL}/aliases")).json()
        await wait_for(lambda: len(loop.bus.events_of(ModelRegistered)) == 2)
        promoted = loop.bus.events_of(ModelPromoted)

    request = loop.bus.events_of(TrainingRequested)[0]
    assert (request.reason, request.requested_by) == ("new_labels", "trainer")
    assert first["state"] == "succeeded", first["error"]
    assert first["requests"][0]["reason"] == "new_labels"
    assert first["result"]["promotion"]["promoted"] is True  # nothing in production yet
    manifest = json.loads((tmp_path / "data" / "trainer" / "snapshots" / f"{first['snapshot_id']}.json").read_text())
    assert {f"sample:{sample_id}" for sample_id in sample_ids} <= {item["source"] for item in manifest["items"]}

    assert version_1["status"] == "ready" and version_1["artifact_uri"] == (tmp_path / "models" / MODEL / "1").as_uri()
    metrics = version_1["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and set(metrics["per_class"]) == {"cat", "dog"}
    # 40 seed photos + 4 labeled ones; identical photos (the set holds a few) count once
    assert len(manifest["items"]) == 44 - len(manifest["superseded"])
    assert sum(metrics["train_counts"].values()) + sum(metrics["eval_counts"].values()) == len(manifest["items"])
    assert metrics["evaluation_set_id"] == manifest["evaluation_set_id"]
    assert version_1["lineage"]["dataset_snapshot_id"] == first["snapshot_id"]
    assert version_1["lineage"]["parent_version"] is None and version_1["lineage"]["parameters"]["epochs"] == 1
    assert version_1["reference_stats"]["n"] == sum(metrics["eval_counts"].values())
    assert version_1["train_duration_s"] > 0 and version_1["train_started_at"]

    assert second["state"] == "succeeded", second["error"]
    assert version_2["lineage"]["parent_version"] == 1  # warm start from production
    assert version_2["lineage"]["dataset_snapshot_id"] == first["snapshot_id"]  # nothing new: the same snapshot
    assert version_2["metrics"]["baseline"]["version"] == 1
    decision = second["result"]["promotion"]
    production = next(a["version"] for a in aliases if a["alias"] == "production" and a["node_group"] is None)
    assert production == (2 if decision["promoted"] else 1) and decision["previous_version"] == 1
    assert decision["decision"]
    assert [event.version for event in promoted] == ([1, 2] if decision["promoted"] else [1])
    assert version_folders(tmp_path / "models", MODEL) == ["1", "2"]


async def test_a_trainer_killed_while_exporting_leaves_nothing_and_retries(
    tmp_path: Path, catdog_train_dir: Path
) -> None:
    seed = catdog_subset(catdog_train_dir, tmp_path / "seed", per_class=16)
    model_dir = tmp_path / "models" / MODEL
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "TF_CPP_MIN_LOG_LEVEL": "2"}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).parent / "trainer_loop.py"),
        str(tmp_path),
        str(seed),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert child.stdout is not None
        run_id = (await asyncio.wait_for(child.stdout.readline(), 120)).decode().strip()
        deadline = time.monotonic() + 90
        while not (model_dir.is_dir() and any(p.name.startswith(".tmp-") for p in model_dir.iterdir())):
            assert time.monotonic() < deadline, f"the child never started exporting: {run_error(tmp_path, run_id)}"
            await asyncio.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        if child.returncode is None:
            child.kill()
        await asyncio.wait_for(child.wait(), 30)

    hidden_after_kill = [p.name for p in model_dir.iterdir()]
    settings = trainer_settings(tmp_path, seed)
    async with running_loop(settings, with_ingest=False) as loop:
        versions_at_restart = await loop.registry.get(f"/v1/models/{MODEL}/versions")
        interrupted = await run_to_end(loop.trainer, run_id)
        retry_id = interrupted["error"].rsplit(" ", 1)[-1]
        retry = await run_to_end(loop.trainer, retry_id)
        registered = (await loop.registry.get(f"/v1/models/{MODEL}/versions")).json()

    assert run_id.startswith("run-")
    assert hidden_after_kill and all(name.startswith(".tmp-") for name in hidden_after_kill)
    assert versions_at_restart.status_code == 404  # the model was never even created
    assert interrupted["state"] == "failed" and "interrupted" in interrupted["error"]
    assert retry["state"] == "succeeded" and retry["attempt"] == 2
    assert [v["version"] for v in registered] == [1]
    assert version_folders(tmp_path / "models", MODEL) == ["1"]  # the half-written folder is gone
