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
    activity: SiteActivity | None = None  # pictures and labeled accuracy over time (ingest)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # the newest of the site's, newest first

    @property
    def drifting(self) -> bool:
        return any(
            figures.get("drifted")
            for stream in self.streams
            for tests in (stream.get("statistics") or {}).values()
            for figures in tests.values()
        )


DEAD_LETTERS_PER_SITE = 5


def overview(
    deployments: list[dict[str, Any]],
    drift: dict[str, Any] | None,
    activity: dict[str, Any] | None = None,
    dead_letters: dict[str, Any] | None = None,
) -> list[SiteRow]:
    """One row per site (a KubeEdge node group is named like its site): what it serves, its drift verdict, its
    pictures and labeled accuracy over time (ingest's ``GET /v1/stats/activity``), its newest dead letters (among
    the newest of the whole system, ingest's ``GET /v1/dead-letters``; those of no site: :func:`unsited`)."""
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
    if activity is not None:
        for counts in activity.get("sites", []):
            site(counts["site_id"]).activity = site_activity(counts, int(activity["bucket_s"]))
    for letter in (dead_letters or {}).get("dead_letters", []):  # newest first
        if letter.get("site_id"):
            row = site(letter["site_id"])
            if len(row.dead_letters) < DEAD_LETTERS_PER_SITE:
                row.dead_letters.append(letter)
    return [sites[name] for name in sorted(sites)]


def unsited(dead_letters: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The newest dead letters tied to no site (an event no handler could take, a message on a malformed topic)."""
    letters = (dead_letters or {}).get("dead_letters", [])
    return [letter for letter in letters if not letter.get("site_id")][:DEAD_LETTERS_PER_SITE]


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


# -- charts: inline SVG drawn on the server ------------------------------------------------------------------------

CHART_WIDTH = 480
CHART_HEIGHT = 150
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 8, 8, 22  # room for the axes' labels


@dataclass(frozen=True)
class ChartBar:
    x: float
    y: float
    width: float
    height: float
    title: str  # the bucket and its figure, shown on hover


@dataclass(frozen=True)
class ChartDot:
    x: float
    y: float
    title: str


@dataclass(frozen=True)
class ChartRow:
    """One bucket in the chart's table (the text alternative)."""

    start: str
    samples: int
    labeled: int
    accuracy: str


@dataclass
class Chart:
    """A chart's geometry in SVG user units, and the words that describe it (``summary`` reads like the chart)."""

    title: str
    summary: str
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    bars: list[ChartBar] = field(default_factory=list)
    path: str = ""  # the accuracy line: "M x y L x y ...", a new M after each bucket without labels
    dots: list[ChartDot] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    baseline: float = CHART_HEIGHT - _BOTTOM
    left: float = _LEFT
    right: float = CHART_WIDTH - _RIGHT

    @property
    def empty(self) -> bool:
        return not self.bars and not self.dots


@dataclass
class SiteActivity:
    """A site's pictures per time bucket as two charts (throughput, labeled accuracy) and their table."""

    site: str
    bucket_s: int
    throughput: Chart
    accuracy: Chart
    rows: list[ChartRow]


def _nice_max(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^k not below ``value`` (the top of the axis)."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if step * top >= value:
                return step * top
        top *= 10


def _clock(start: str, bucket_s: int) -> str:
    """``2026-12-03T14:00:00Z`` as ``14:00`` for buckets under a day, ``12-03`` otherwise."""
    text = start.replace("T", " ")
    return text[11:16] if bucket_s < 86400 else text[5:10]


def site_activity(site: dict[str, Any], bucket_s: int) -> SiteActivity:
    """Charts of one site of ingest's ``GET /v1/stats/activity`` answer (``{"site_id", "buckets": [...]}``)."""
    buckets = site.get("buckets") or []
    name = site["site_id"]
    count = max(len(buckets), 1)
    plot_w = CHART_WIDTH - _LEFT - _RIGHT
    plot_h = CHART_HEIGHT - _TOP - _BOTTOM
    slot = plot_w / count
    x_ticks = []
    every = max(1, round(count / 6))  # about six time labels
    for i, bucket in enumerate(buckets):
        if i % every == 0:
            x_ticks.append((_LEFT + slot * (i + 0.5), _clock(bucket["start"], bucket_s)))

    total = sum(int(b["samples"]) for b in buckets)
    top = _nice_max(max((int(b["samples"]) for b in buckets), default=0))
    bars = []
    for i, bucket in enumerate(buckets):
        n = int(bucket["samples"])
        if n:
            height = plot_h * n / top
            title = f"{_clock(bucket['start'], bucket_s)}: {n} picture{'s' if n != 1 else ''}"
            bars.append(ChartBar(_LEFT + slot * i + slot * 0.1, _TOP + plot_h - height, slot * 0.8, height, title))
    busiest = max(buckets, key=lambda b: int(b["samples"]), default=None)
    peak = f"; the most, {busiest['samples']}, at {_clock(busiest['start'], bucket_s)}" if busiest and total else ""
    throughput = Chart(
        title=f"Pictures received at {name}",
        summary=f"{total} picture{'s' if total != 1 else ''} in {len(buckets)} buckets of {_duration(bucket_s)}{peak}.",
        bars=bars,
        y_ticks=[(_TOP + plot_h - plot_h * f, f"{top * f:g}") for f in (0, 0.5, 1)] if total else [],
        x_ticks=x_ticks,
    )

    dots, path, pen_down = [], [], False
    labeled = correct = 0
    for i, bucket in enumerate(buckets):
        accuracy = bucket.get("accuracy")
        if accuracy is None:
            pen_down = False
            continue
        labeled += int(bucket["labeled"])
        correct += int(bucket["correct"])
        x = _LEFT + slot * (i + 0.5)
        y = _TOP + plot_h * (1 - float(accuracy))
        path.append(f"{'L' if pen_down else 'M'} {x:.1f} {y:.1f}")
        pen_down = True
        title = f"{_clock(bucket['start'], bucket_s)}: {accuracy * 100:.0f}% of {bucket['labeled']} labeled"
        dots.append(ChartDot(x, y, title))
    overall = f"{correct / labeled * 100:.1f}% right over {labeled} labeled pictures" if labeled else "no labels yet"
    accuracy_chart = Chart(
        title=f"Accuracy on labeled pictures at {name}",
        summary=f"Answers against people's labels: {overall}, per bucket of {_duration(bucket_s)}.",
        path=" ".join(path),
        dots=dots,
        y_ticks=[(_TOP + plot_h * (1 - f), f"{f * 100:.0f}%") for f in (0, 0.5, 1)] if labeled else [],
        x_ticks=x_ticks,
    )
    rows = [
        ChartRow(
            start=str(b["start"]).replace("T", " ")[:16],
            samples=int(b["samples"]),
            labeled=int(b["labeled"]),
            accuracy=f"{b['accuracy'] * 100:.0f}%" if b.get("accuracy") is not None else "—",
        )
        for b in buckets
    ]
    return SiteActivity(site=name, bucket_s=bucket_s, throughput=throughput, accuracy=accuracy_chart, rows=rows)


def _duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day{'s' if seconds != 86400 else ''}"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour{'s' if seconds != 3600 else ''}"
    return f"{seconds // 60} minutes"
