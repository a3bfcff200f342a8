"""What the pages show, computed from the services' answers: plain functions over JSON, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class VersionRow:
    version: int
    status: str
    accuracy: float | None
    train_counts: dict[str, int]
    eval_counts: dict[str, int]
    per_class: dict[str, dict[str, Any]]
    train_duration_s: float | None
    train_started_at: str | None
    backbone: str | None
    parent_version: int | None
    evaluation_set_id: str | None
    baseline: dict[str, Any] | None
    created_at: str
    aliases: list[str] = field(default_factory=list)
    deployed_to: list[str] = field(default_factory=list)


def version_rows(
    versions: list[dict[str, Any]], aliases: list[dict[str, Any]], deployments: list[dict[str, Any]], model: str
) -> list[VersionRow]:
    """Newest first, with the aliases pointing at each and the node groups actually serving it."""
    rows = []
    for version in versions:
        metrics = version.get("metrics") or {}
        lineage = version.get("lineage") or {}
        parameters = lineage.get("parameters") or {}
        number = version["version"]
        rows.append(
            VersionRow(
                version=number,
                status=version.get("status", ""),
                accuracy=metrics.get("accuracy"),
                train_counts=dict(metrics.get("train_counts") or {}),
                eval_counts=dict(metrics.get("eval_counts") or {}),
                per_class=dict(metrics.get("per_class") or {}),
                train_duration_s=version.get("train_duration_s"),
                train_started_at=version.get("train_started_at"),
                backbone=parameters.get("backbone"),
                parent_version=lineage.get("parent_version"),
                evaluation_set_id=metrics.get("evaluation_set_id"),
                baseline=metrics.get("baseline"),
                created_at=version.get("created_at", ""),
                aliases=[alias_name(alias) for alias in aliases if alias.get("version") == number],
                deployed_to=[
                    d["node_group"]
                    for d in deployments
                    if d.get("model_name") == model and d.get("actual_version") == number
                ],
            )
        )
    return sorted(rows, key=lambda row: row.version, reverse=True)


def alias_name(alias: dict[str, Any]) -> str:
    return f"{alias['alias']}@{alias['node_group']}" if alias.get("node_group") else str(alias["alias"])


def production_version(aliases: list[dict[str, Any]]) -> int | None:
    for alias in aliases:
        if alias.get("alias") == "production" and not alias.get("node_group"):
            return int(alias["version"])
    return None


def classes_of_versions(versions: list[dict[str, Any]], preferred: int | None) -> list[str]:
    """The classes of the preferred version (production), else of the newest one that names them."""
    ordered = sorted(versions, key=lambda v: (v["version"] != preferred, -v["version"]))
    for version in ordered:
        metrics = version.get("metrics") or {}
        names = set(metrics.get("train_counts") or {}) | set(metrics.get("per_class") or {})
        if names:
            return sorted(names)
    return []


def label_classes(configured: list[str], registry: list[str], sample: dict[str, Any] | None) -> list[str]:
    """Key 1 is the first class: the configured order, else the registry's, else the picture's scores."""
    if configured:
        return configured
    if registry:
        return registry
    return sorted((sample or {}).get("scores") or {})


def ranked_scores(scores: dict[str, float] | None) -> list[tuple[str, float]]:
    return sorted((scores or {}).items(), key=lambda item: -item[1])


@dataclass
class SiteRow:
    site: str
    deployments: list[dict[str, Any]] = field(default_factory=list)
    streams: list[dict[str, Any]] = field(default_factory=list)
    latest_alarm: dict[str, Any] | None = None
    accuracy: list[dict[str, Any]] = field(default_factory=list)

    @property
    def drifting(self) -> bool:
        return any(
            figures.get("drifted")
            for stream in self.streams
            for tests in (stream.get("statistics") or {}).values()
            for figures in tests.values()
        )


def overview(deployments: list[dict[str, Any]], drift: dict[str, Any] | None) -> list[SiteRow]:
    """One row per site (a KubeEdge node group is named like its site): what it serves, its drift verdict."""
    sites: dict[str, SiteRow] = {}

    def site(name: str) -> SiteRow:
        return sites.setdefault(name, SiteRow(name))

    for deployment in deployments:
        site(deployment["node_group"]).deployments.append(deployment)
    if drift is not None:
        for stream in drift.get("streams", []):
            site(stream["site_id"]).streams.append(stream)
        for alarm in drift.get("alarms", []):  # newest first
            row = site(alarm["site_id"])
            row.latest_alarm = row.latest_alarm or alarm
        for accuracy in drift.get("accuracy", []):
            site(accuracy["site_id"]).accuracy.append(accuracy)
    return [sites[name] for name in sorted(sites)]


def drifted_features(stream: dict[str, Any]) -> list[str]:
    return sorted(
        f"{feature} ({test})"
        for feature, tests in (stream.get("statistics") or {}).items()
        for test, figures in tests.items()
        if figures.get("drifted")
    )


def devices_by_site(devices: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_site: dict[str, list[dict[str, Any]]] = {}
    for device in devices:
        by_site.setdefault(device["site_id"], []).append(device)
    return {site: sorted(items, key=lambda d: d["device_id"]) for site, items in sorted(by_site.items())}


def push_history(history: list[str], sample_id: str, keep: int = 20) -> list[str]:
    """The labels given in this sitting, newest last (for Undo), at most ``keep``."""
    return [*[s for s in history if s != sample_id], sample_id][-keep:]


def parse_history(text: str | None) -> list[str]:
    return [part for part in (text or "").split(",") if part][-20:]
