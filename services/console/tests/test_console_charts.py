"""The overview's charts: inline SVG geometry drawn on the server from ingest's activity counts, and the words
that stand in for them (a title, a description, a table)."""

from __future__ import annotations

from typing import Any

from edgeloop_console import service as views


def buckets(samples: list[int], labeled: list[int], correct: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "start": f"2026-12-03T{hour:02d}:00:00Z",
            "samples": n,
            "labeled": lab,
            "correct": ok,
            "accuracy": ok / lab if lab else None,
        }
        for hour, (n, lab, ok) in enumerate(zip(samples, labeled, correct, strict=True))
    ]


def test_throughput_bars_scale_to_a_round_top_and_empty_buckets_draw_nothing() -> None:
    activity = views.site_activity(
        {"site_id": "site-a", "buckets": buckets([0, 30, 60, 0], [0, 10, 4, 0], [0, 9, 2, 0])}, 3600
    )
    chart = activity.throughput
    assert len(chart.bars) == 2  # the two buckets with pictures
    low, high = chart.bars
    assert high.height == 2 * low.height  # 60 against 30 on an axis to 100
    assert [text for _, text in chart.y_ticks] == ["0", "50", "100"]
    five = views.site_activity({"site_id": "s", "buckets": buckets([4], [0], [0])}, 3600).throughput
    assert [text for _, text in five.y_ticks] == ["0", "2.5", "5"]
    assert high.y + high.height == chart.baseline and low.x < high.x
    assert chart.summary == "90 pictures in 4 buckets of 1 hour; the most, 60, at 02:00."
    assert high.title == "02:00: 60 pictures"
    assert [text for _, text in chart.x_ticks] == ["00:00", "01:00", "02:00", "03:00"]


def test_accuracy_line_breaks_where_a_bucket_has_no_label() -> None:
    activity = views.site_activity(
        {"site_id": "site-a", "buckets": buckets([5, 5, 5, 5], [2, 0, 4, 4], [2, 0, 1, 3])}, 3600
    )
    chart = activity.accuracy
    assert len(chart.dots) == 3
    assert chart.path.count("M") == 2 and chart.path.count("L") == 1  # 00:00 alone, then 02:00 -> 03:00
    top, low = chart.dots[0], chart.dots[1]
    assert top.y < low.y  # 100% above 25%
    assert (
        chart.summary == "Answers against people's labels: 60.0% right over 10 labeled pictures, per bucket of 1 hour."
    )
    assert [row.accuracy for row in activity.rows] == ["100%", "—", "25%", "75%"]
    assert activity.rows[0].start == "2026-12-03 00:00"


def test_a_site_without_pictures_or_labels_says_so() -> None:
    activity = views.site_activity({"site_id": "quiet", "buckets": buckets([0, 0], [0, 0], [0, 0])}, 21600)
    assert activity.throughput.empty and activity.accuracy.empty
    assert activity.throughput.summary == "0 pictures in 2 buckets of 6 hours."
    assert "no labels yet" in activity.accuracy.summary


def test_the_overview_puts_the_activity_on_its_site() -> None:
    answer = {"bucket_s": 3600, "sites": [{"site_id": "site-z", "buckets": buckets([1], [0], [0])}]}
    rows = views.overview([], None, answer)
    assert [row.site for row in rows] == ["site-z"]
    assert rows[0].activity is not None and rows[0].activity.throughput.title == "Pictures received at site-z"
