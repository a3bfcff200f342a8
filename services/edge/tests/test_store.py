"""The edge store on its own: acceptance order, redelivery, the answer, the uplink order and the bounds."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from edgeloop_common.uplink import EdgeInference
from edgeloop_edge.store import REJECTED_KEPT, EdgeStore, Picture


def make_store(tmp_path: Path, *, max_records: int = 1000, max_bytes: int = 10**9) -> EdgeStore:
    return EdgeStore(tmp_path / "edge.sqlite3", max_records=max_records, max_bytes=max_bytes)


def accept(store: EdgeStore, device: str, image: bytes, *, packet_id: int = 0, redelivered: bool = False) -> Picture:
    picture = maybe_accept(store, device, image, packet_id=packet_id, redelivered=redelivered)
    assert picture is not None
    return picture


def maybe_accept(
    store: EdgeStore, device: str, image: bytes, *, packet_id: int = 0, redelivered: bool = False
) -> Picture | None:
    return store.accept(
        device_id=device,
        mqtt_topic=f"dt/edgeloop/s/{device}/image",
        mqtt_packet_id=packet_id,
        image=image,
        sha256=hashlib.sha256(image).hexdigest(),
        image_format="jpeg",
        width=4,
        height=4,
        redelivered=redelivered,
    )


def inference(*, hard: bool = False) -> EdgeInference:
    return EdgeInference(
        model_name="catdog",
        model_version=1,
        scores={"cat": 0.6, "dog": 0.4},
        top_label="cat",
        confidence=0.6,
        latency_ms=3.0,
        served_by="edge",
        hard_example=hard,
        completed_at=datetime.now(UTC),
    )


def test_each_device_counts_its_pictures_from_one_in_acceptance_order(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    sequences = [accept(store, device, f"{device}{n}".encode()).sequence for n in range(3) for device in "ab"]
    assert sequences == [1, 1, 2, 2, 3, 3]
    assert [picture.sequence for picture in store.unanswered() if picture.device_id == "a"] == [1, 2, 3]


def test_the_sequence_survives_a_restart(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    accept(store, "a", b"one")
    store.close()
    again = make_store(tmp_path)
    assert accept(again, "a", b"two").sequence == 2
    assert len(again.unanswered()) == 2


def test_a_redelivered_message_already_stored_is_not_stored_again(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = accept(store, "a", b"frame", packet_id=7)
    assert maybe_accept(store, "a", b"frame", packet_id=7, redelivered=True) is None
    # The same bytes in another message (a camera on an unchanged scene) are a new picture, redelivered or not.
    assert accept(store, "a", b"frame", packet_id=8).sequence == 2
    assert accept(store, "a", b"frame", packet_id=9, redelivered=True).sequence == 3
    # Still recognised once the first was forwarded and left the queue.
    store.answer(first.record_id, inference(), keep_image=False)
    store.forwarded(first.record_id)
    assert maybe_accept(store, "a", b"frame", packet_id=7, redelivered=True) is None
    assert store.depth().records == 2


def test_an_answer_keeps_the_picture_only_when_it_travels(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    kept = accept(store, "a", b"kept-picture")
    dropped = accept(store, "a", b"not-sent")
    store.answer(kept.record_id, inference(hard=True), keep_image=True)
    store.answer(dropped.record_id, inference(), keep_image=False)
    forward = store.next_to_forward(10)
    assert [(p.record_id, p.image, p.hard) for p in forward] == [
        (kept.record_id, b"kept-picture", True),
        (dropped.record_id, None, False),
    ]
    assert store.depth().image_bytes == len(b"kept-picture")


def test_nothing_of_a_device_is_forwarded_ahead_of_its_unanswered_picture(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    a1 = accept(store, "a", b"a1")
    a2 = accept(store, "a", b"a2")
    b1 = accept(store, "b", b"b1")
    store.answer(a2.record_id, inference(), keep_image=False)  # answered before a1
    store.answer(b1.record_id, inference(), keep_image=False)
    assert [p.record_id for p in store.next_to_forward(10)] == [b1.record_id]
    store.answer(a1.record_id, inference(), keep_image=False)
    assert [p.record_id for p in store.next_to_forward(10)] == [a1.record_id, a2.record_id, b1.record_id]
    store.forwarded(a1.record_id)
    assert [p.record_id for p in store.next_to_forward(10)] == [a2.record_id, b1.record_id]


def test_at_the_byte_bound_pictures_of_ordinary_records_go_first_and_hard_examples_stay(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_bytes=25)
    hard = accept(store, "a", b"h" * 10)
    store.answer(hard.record_id, inference(hard=True), keep_image=True)
    ordinary = []
    for n in range(3):
        picture = accept(store, "a", bytes([n]) * 10)
        store.answer(picture.record_id, inference(), keep_image=True)
        ordinary.append(picture)
    dropped = store.enforce_bounds()
    assert (dropped.pictures, dropped.records, dropped.hard_records) == (2, 0, 0)
    images = {p.record_id: p.image for p in store.next_to_forward(10)}
    assert images[hard.record_id] == b"h" * 10  # the hard example keeps its picture
    assert images[ordinary[0].record_id] is None and images[ordinary[1].record_id] is None  # the oldest go first
    assert images[ordinary[2].record_id] == bytes([2]) * 10
    assert len(images) == 4  # every record still travels


def test_at_the_record_bound_the_oldest_ordinary_records_go_before_any_hard_example(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_records=3)
    pictures = []
    for n, hard in enumerate([True, False, False, True, False]):
        picture = accept(store, "a", bytes([n]))
        store.answer(picture.record_id, inference(hard=hard), keep_image=False)
        pictures.append(picture)
    dropped = store.enforce_bounds()
    assert (dropped.records, dropped.hard_records) == (2, 0)
    left = [p.record_id for p in store.next_to_forward(10)]
    assert left == [pictures[0].record_id, pictures[3].record_id, pictures[4].record_id]


def test_unanswered_pictures_are_never_dropped(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_records=1)
    for n in range(3):
        accept(store, "a", bytes([n]))
    assert not store.enforce_bounds()
    assert store.depth().unanswered == 3


@pytest.mark.parametrize("reason", ["HTTP 400 the picture does not match its hash"])
def test_a_refused_record_is_set_aside_with_its_reason(tmp_path: Path, reason: str) -> None:
    store = make_store(tmp_path)
    picture = accept(store, "a", b"x")
    store.answer(picture.record_id, inference(), keep_image=True)
    store.set_aside(store.next_to_forward(1)[0], reason)
    assert store.next_to_forward(10) == []
    assert [(row["record_id"], row["reason"]) for row in store.set_aside_records()] == [(picture.record_id, reason)]


def test_the_queue_totals_follow_every_change_and_are_rebuilt_from_the_rows_at_start(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    pictures = [accept(store, "a", f"picture-{n}".encode()) for n in range(4)]  # 9 bytes each
    store.answer(pictures[0].record_id, inference(), keep_image=True)
    store.answer(pictures[1].record_id, inference(), keep_image=False)
    store.forwarded(pictures[0].record_id)
    depth = store.depth()
    store.close()
    with sqlite3.connect(tmp_path / "edge.sqlite3") as db:
        counted = db.execute("SELECT COUNT(*), SUM(image_bytes), SUM(answered = 0) FROM pictures").fetchone()
        db.execute("UPDATE queue_totals SET records = 999")  # totals gone wrong: the next start repairs them
    assert (depth.records, depth.image_bytes, depth.unanswered) == tuple(counted) == (3, 2 * 9, 2)
    assert make_store(tmp_path).depth().records == 3


def test_only_the_newest_rejections_are_kept(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for n in range(REJECTED_KEPT + 5):
        store.reject(device_id="cam-9", mqtt_topic=None, size_bytes=n, reason=f"garbage {n}")
    kept = store.rejected(limit=1000)
    assert store.depth().rejected == REJECTED_KEPT
    assert kept[0]["reason"] == f"garbage {REJECTED_KEPT + 4}" and kept[-1]["reason"] == "garbage 5"
