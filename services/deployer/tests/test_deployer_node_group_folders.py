"""The per-node-group local target without a model server: what it makes of the group's folder, how it reads the
status API. (test_deployer_local.py runs it against two real lite model servers.)"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from edgeloop_deployer.adapters.local import NodeGroupModelServersTarget
from edgeloop_deployer.app import target_from_settings
from edgeloop_deployer.service import TargetError, WorkloadPlan
from edgeloop_deployer.settings import Settings

SERVERS = {"site-a": "http://127.0.0.1:8601", "site-b": "http://127.0.0.1:8602"}


def export(model_base: Path, version: int, model: str = "catdog") -> Path:
    folder = model_base / model / str(version)
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph %d" % version)
    return folder


@pytest.fixture
def model_base(tmp_path: Path) -> Path:
    base = tmp_path / "models"
    for version in (1, 2, 3):
        export(base, version)
    return base


@pytest.fixture
async def target(tmp_path: Path, model_base: Path) -> AsyncIterator[NodeGroupModelServersTarget]:
    chosen = NodeGroupModelServersTarget(SERVERS, models_root=tmp_path / "node-groups", model_base=model_base)
    yield chosen
    await chosen.close()


def entries(folder: Path) -> dict[str, str]:
    return {e.name: os.readlink(e) if e.is_symlink() else "copy" for e in sorted(folder.iterdir())}


async def test_apply_links_the_version_and_unlinks_the_newer_ones(
    target: NodeGroupModelServersTarget, tmp_path: Path, model_base: Path
) -> None:
    folder = tmp_path / "node-groups" / "site-a" / "catdog"
    for version in (1, 3):
        await target.apply(WorkloadPlan("catdog", "site-a", version))
    assert entries(folder) == {"1": str(model_base / "catdog/1"), "3": str(model_base / "catdog/3")}

    await target.apply(WorkloadPlan("catdog", "site-a", 2))  # going back: 3 goes, 1 stays, 2 comes

    assert entries(folder) == {"1": str(model_base / "catdog/1"), "2": str(model_base / "catdog/2")}
    assert (folder / "2" / "saved_model.pb").read_bytes() == b"graph 2"
    assert not (tmp_path / "node-groups" / "site-b").exists()
    assert target.endpoint("catdog", "site-b") == "http://127.0.0.1:8602"


async def test_without_symlinks_the_version_is_copied_and_a_rollback_removes_the_copy(
    target: NodeGroupModelServersTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_symlinks(*_args: object, **_kwargs: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    folder = tmp_path / "node-groups" / "site-b" / "catdog"

    await target.apply(WorkloadPlan("catdog", "site-b", 1))
    await target.apply(WorkloadPlan("catdog", "site-b", 2))
    assert entries(folder) == {"1": "copy", "2": "copy"}
    assert (folder / "2" / "saved_model.pb").read_bytes() == b"graph 2"

    await target.apply(WorkloadPlan("catdog", "site-b", 1))

    assert entries(folder) == {"1": "copy"}  # no staging or half-removed folder left behind either


async def test_leftovers_of_an_interrupted_apply_are_cleared_and_delete_unlinks_every_version(
    target: NodeGroupModelServersTarget, tmp_path: Path, model_base: Path
) -> None:
    folder = tmp_path / "node-groups" / "site-a" / "catdog"
    folder.mkdir(parents=True)
    (folder / ".4.tmp-0a1b2c3d").symlink_to(model_base / "catdog" / "1")
    (folder / ".2.removing-0a1b2c3d").mkdir()

    await target.apply(WorkloadPlan("catdog", "site-a", 1))
    await target.apply(WorkloadPlan("catdog", "site-a", 2))
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2"]

    assert await target.delete("catdog", "site-a") is True
    assert list(folder.iterdir()) == []
    assert await target.delete("catdog", "site-a") is False
    assert sorted(p.name for p in (model_base / "catdog").iterdir()) == ["1", "2", "3"]  # the trainer's are untouched


async def test_a_version_the_trainer_never_exported_or_an_unknown_group_is_refused(
    target: NodeGroupModelServersTarget,
) -> None:
    with pytest.raises(TargetError, match=r"version 7 of catdog is not in the model base \(.*/models/catdog/7\)"):
        await target.apply(WorkloadPlan("catdog", "site-a", 7))
    with pytest.raises(TargetError, match="no model server is configured for node group 'site-z'"):
        await target.apply(WorkloadPlan("catdog", "site-z", 1))
    with pytest.raises(TargetError, match=r"invalid model name '\.\.'"):
        await target.delete("..", "site-a")


def status(*versions: tuple[int, str, str]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": state,
                "status": {"error_code": "OK" if not error else "UNKNOWN", "error_message": error},
            }
            for v, state, error in versions
        ]
    }


@pytest.mark.parametrize(
    ("answer", "state", "detail"),
    [
        (
            status((2, "AVAILABLE", ""), (1, "UNLOADING", "")),
            "ready",
            "version 2 AVAILABLE on the model server of site-a",
        ),
        (
            status((1, "AVAILABLE", "")),
            "progressing",
            "version 2 not in the status answer of the model server of site-a yet",
        ),
        (status((2, "LOADING", "")), "progressing", "version 2 is LOADING on the model server of site-a"),
        (
            status((3, "UNLOADING", ""), (2, "AVAILABLE", "")),
            "progressing",
            "version 2 AVAILABLE on the model server of site-a, newer still there: 3 UNLOADING",
        ),
        (
            status((3, "AVAILABLE", ""), (2, "END", "")),
            "progressing",
            "version 2 is END on the model server of site-a; waiting for a reload",
        ),
        (status((3, "END", ""), (2, "AVAILABLE", "")), "ready", "version 2 AVAILABLE on the model server of site-a"),
        (
            status((2, "END", "NOT_FOUND: no signature serving_default")),
            "failed",
            "version 2 is END on the model server of site-a: NOT_FOUND: no signature serving_default",
        ),
    ],
    ids=["available", "not-yet", "loading", "newer-unloading", "unloaded-before", "newer-gone", "load-failed"],
)
async def test_observe_reads_the_groups_server(
    tmp_path: Path, model_base: Path, answer: dict[str, Any], state: str, detail: str
) -> None:
    asked: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(200, json=answer)

    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        target = NodeGroupModelServersTarget(SERVERS, models_root=tmp_path, model_base=model_base, http=http)
        observation = await target.observe(WorkloadPlan("catdog", "site-a", 2))

    assert (observation.state, observation.detail) == (state, detail)
    assert asked == ["http://127.0.0.1:8601/v1/models/catdog"]


async def test_the_settings_choose_the_per_group_target_only_when_servers_are_given(tmp_path: Path) -> None:
    def settings(servers: str) -> Settings:
        return Settings(
            target="local",
            model_server_url="http://127.0.0.1:8501/",
            local_node_group_servers=servers,
            local_models_root=tmp_path / "groups",
            local_model_base=tmp_path / "models",
        )

    per_group = target_from_settings(settings("site-a=http://127.0.0.1:8601,site-b=http://127.0.0.1:8602"))
    single = target_from_settings(settings(""))
    try:
        assert isinstance(per_group, NodeGroupModelServersTarget) and per_group.rolls_back
        assert per_group.models_root == (tmp_path / "groups").resolve()
        assert per_group.model_base == (tmp_path / "models").resolve()
        assert [per_group.endpoint("catdog", g) for g in ("site-a", "site-b")] == list(SERVERS.values())
        assert type(single).__name__ == "LocalModelServerTarget" and not single.rolls_back
        assert single.endpoint("catdog", "site-b") == "http://127.0.0.1:8501"
    finally:
        await per_group.close()
        await single.close()
