"""Validation: real photos pass; hostile payloads are refused with a reason naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from edgeloop_ingest.validation import (
    ImageLimits,
    RejectedInput,
    RejectionCode,
    parse_telemetry,
    validate_image,
)
from ingest_testing import as_png, catdog_photos, gif_bytes, jpeg_declaring, png_declaring, png_with_bad_crc

LIMITS = ImageLimits(max_bytes=10 * 1024 * 1024, max_pixels=40_000_000)


@pytest.fixture(scope="module")
def photos(catdog_train_dir: Path) -> list[Path]:
    return catdog_photos(catdog_train_dir)


def rejection(payload: bytes, limits: ImageLimits = LIMITS) -> RejectedInput:
    with pytest.raises(RejectedInput) as caught:
        validate_image(payload, limits)
    return caught.value


def test_real_photos_are_accepted_with_their_dimensions(photos: list[Path]) -> None:
    from PIL import Image

    for photo in photos:
        info = validate_image(photo.read_bytes(), LIMITS)
        with Image.open(photo) as image:
            assert (info.format, info.width, info.height) == ("jpeg", *image.size)
        assert info.content_type == "image/jpeg"


def test_png_is_accepted(photos: list[Path]) -> None:
    info = validate_image(as_png(photos[0]), LIMITS)
    assert info.format == "png" and info.content_type == "image/png"


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.1])
def test_truncated_jpeg_is_refused(photos: list[Path], keep: float) -> None:
    data = photos[1].read_bytes()
    refused = rejection(data[: int(len(data) * keep)])
    assert refused.code is RejectionCode.CORRUPT
    assert "JPEG" in refused.reason


def test_truncated_png_is_refused(photos: list[Path]) -> None:
    data = as_png(photos[0])
    refused = rejection(data[: len(data) - 20])
    assert refused.code is RejectionCode.CORRUPT and "PNG" in refused.reason


def test_png_with_a_bad_checksum_is_refused(photos: list[Path]) -> None:
    assert rejection(png_with_bad_crc(as_png(photos[0]))).code is RejectionCode.CORRUPT


def test_png_declaring_huge_dimensions_is_refused_before_decoding() -> None:
    refused = rejection(png_declaring(100_000, 100_000))
    assert refused.code is RejectionCode.TOO_MANY_PIXELS
    assert "pixels" in refused.reason


def test_png_just_over_the_pixel_limit_names_its_size() -> None:
    refused = rejection(png_declaring(8000, 6000), ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=40_000_000))
    assert refused.code is RejectionCode.TOO_MANY_PIXELS
    assert "8000x6000" in refused.reason and "40000000" in refused.reason


def test_jpeg_declaring_huge_dimensions_is_refused(photos: list[Path]) -> None:
    refused = rejection(jpeg_declaring(photos[0].read_bytes(), 60_000, 60_000))
    assert refused.code is RejectionCode.TOO_MANY_PIXELS


def test_pixel_limit_is_a_setting(photos: list[Path]) -> None:
    refused = rejection(photos[0].read_bytes(), ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=1000))
    assert refused.code is RejectionCode.TOO_MANY_PIXELS


def test_byte_limit(photos: list[Path]) -> None:
    data = photos[0].read_bytes()
    refused = rejection(data, ImageLimits(max_bytes=len(data) - 1, max_pixels=LIMITS.max_pixels))
    assert refused.code is RejectionCode.TOO_LARGE
    assert str(len(data)) in refused.reason


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (b"", RejectionCode.EMPTY, "empty"),
        (b"hello, this is not a picture", RejectionCode.UNSUPPORTED_FORMAT, "text"),
        (b"\x00\x01\x02\x03" * 10, RejectionCode.UNSUPPORTED_FORMAT, "binary"),
        (b"\xff\xd8\xff" + b"\x00" * 100, RejectionCode.CORRUPT, "JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, RejectionCode.CORRUPT, "PNG"),
    ],
)
def test_hostile_payloads(payload: bytes, code: RejectionCode, words: str) -> None:
    refused = rejection(payload)
    assert refused.code is code
    assert words in refused.reason


def test_gif_is_refused_and_named() -> None:
    refused = rejection(gif_bytes())
    assert refused.code is RejectionCode.UNSUPPORTED_FORMAT
    assert "GIF" in refused.reason


def test_format_is_sniffed_not_trusted(photos: list[Path]) -> None:
    # A PNG is a PNG even when the device would call it a JPEG: the bytes decide.
    assert validate_image(as_png(photos[0]), LIMITS).format == "png"


def test_telemetry_with_readings_and_time() -> None:
    [telemetry] = parse_telemetry(
        b'{"readings": {"temperature_c": 21.5, "door": "open", "motion": true}, "measured_at": "2025-01-02T03:04:05Z"}',
        max_bytes=65536,
    )
    assert telemetry.readings == {"temperature_c": 21.5, "door": "open", "motion": True}
    assert telemetry.measured_at is not None and telemetry.measured_at.year == 2025


def test_flat_telemetry_object_is_readings() -> None:
    [telemetry] = parse_telemetry(b'{"temperature_c": 20, "battery": 0.8}', max_bytes=65536)
    assert telemetry.readings == {"temperature_c": 20, "battery": 0.8}
    assert telemetry.measured_at is None


@pytest.mark.parametrize("machine_event", ["failure", "maintenance"])
def test_telemetry_carries_a_machine_event(machine_event: str) -> None:
    [nested] = parse_telemetry(
        b'{"readings": {"rpm": 1480}, "machine_event": "%s"}' % machine_event.encode(), max_bytes=65536
    )
    [flat] = parse_telemetry(b'{"rpm": 1480, "machine_event": "%s"}' % machine_event.encode(), max_bytes=65536)
    assert nested.machine_event == flat.machine_event == machine_event
    assert nested.readings == flat.readings == {"rpm": 1480}  # the label is not a reading


def test_telemetry_without_machine_event_has_none() -> None:
    assert parse_telemetry(b'{"readings": {"rpm": 1480}}', max_bytes=65536)[0].machine_event is None


def test_a_batch_of_samples_is_taken_in_order_each_with_its_time_and_event() -> None:
    samples = parse_telemetry(
        b'{"samples": [{"measured_at": "2025-01-02T03:04:05Z", "readings": {"rpm": 1480}},'
        b' {"measured_at": "2025-01-02T03:04:06Z", "readings": {"rpm": 1475, "ok": true}, "machine_event": "failure"},'
        b' {"measured_at": "2025-01-02T03:04:07+01:00", "readings": {"rpm": 0}}]}',
        max_bytes=65536,
    )
    assert [sample.readings for sample in samples] == [{"rpm": 1480}, {"rpm": 1475, "ok": True}, {"rpm": 0}]
    assert [sample.machine_event for sample in samples] == [None, "failure", None]
    assert [sample.measured_at.second for sample in samples if sample.measured_at] == [5, 6, 7]


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'{"readings": {"t": {"nested": 1}}}', "number, string or boolean"),
        (b'{"readings": {"t": NaN}}', "finite"),
        (b'{"readings": {}}', "no readings"),
        (b'{"readings": {"t": 1}, "measured_at": "yesterday"}', "ISO 8601"),
        (b'{"readings": [1]}', "JSON object"),
        (b"", "empty"),
        # Under the size limit, nested past the JSON parser's recursion limit: a RecursionError escaped (tests/hostile).
        (b'{"readings": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "nested too deeply"),
        (b'{"readings": {"t": "\xff\xfe"}}', "not JSON"),
        (b'{"readings": {"t": 1}, "machine_event": "exploded"}', "'machine_event' must be one of 'failure'"),
        (b'{"t": 1, "machine_event": 1}', "'machine_event' must be one of"),
        (b'{"readings": {"t": 1}, "machine_event": ["failure"]}', "'machine_event' must be one of"),
        # A batch is taken or refused whole; the reason names the sample.
        (b'{"samples": []}', "non-empty JSON array"),
        (b'{"samples": {"t": 1}}', "non-empty JSON array"),
        (b'{"samples": [{"measured_at": "2025-01-02T03:04:05Z", "readings": {"t": 1}}], "site": "x"}', "beside"),
        (
            b'{"samples": [{"measured_at": "2025-01-02T03:04:05Z", "readings": {"t": 1}}, {"readings": {"t": 2}}]}',
            "samples[1]: a sample must be a JSON object with 'measured_at' and 'readings'",
        ),
        (b'{"samples": [{"measured_at": "2025-01-02T03:04:05Z", "t": 1}]}', "samples[0]: a sample must be"),
        (b'{"samples": [{"measured_at": "2025-01-02T03:04:05Z", "readings": {"t": NaN}}]}', "samples[0]: reading 't'"),
        (b'{"samples": [{"measured_at": "soon", "readings": {"t": 1}}]}', "samples[0]: 'measured_at'"),
        (
            b'{"samples": ['
            + b",".join([b'{"measured_at": "2025-01-02T03:04:05Z", "readings": {"t": 1}}'] * 1001)
            + b"]}",
            "the limit is 1000",
        ),
    ],
)
def test_bad_telemetry_is_refused_with_reason(payload: bytes, words: str) -> None:
    with pytest.raises(RejectedInput) as caught:
        parse_telemetry(payload, max_bytes=128 * 1024)
    assert words in caught.value.reason
