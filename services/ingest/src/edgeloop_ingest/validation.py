"""What ingest accepts: JPEG or PNG images within limits, and telemetry JSON.

Every check names what was wrong in words a device owner can act on. The
format is sniffed from the bytes (magic numbers), never taken from the topic
or a header; the dimensions are read from the image header and checked
*before* anything is decoded, so a decompression bomb costs nothing; then the
whole image is decoded, so a truncated or corrupt file is caught here and not
by a consumer later.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass
from enum import StrEnum

from edgeloop_common.events import ImageFormat
from edgeloop_common.telemetry.messages import InvalidTelemetryError, TelemetryMessage, parse_telemetry_samples
from edgeloop_common.topics import ID_PATTERN
from PIL import Image, ImageFile, UnidentifiedImageError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONTENT_TYPES: dict[ImageFormat, str] = {"jpeg": "image/jpeg", "png": "image/png"}
_ID = re.compile(rf"^{ID_PATTERN}$")
# What Pillow raises on malformed input (its decoders were fuzzed into all of these): a corrupt file, not a crash.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)


class RejectionCode(StrEnum):
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_MANY_PIXELS = "too_many_pixels"
    CORRUPT = "corrupt"
    BAD_TOPIC = "bad_topic"
    BAD_ID = "bad_id"
    BAD_TELEMETRY = "bad_telemetry"


class RejectedInput(Exception):
    """Input that can never be accepted; ``reason`` says why in plain words."""

    def __init__(self, code: RejectionCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class ImageInfo:
    format: ImageFormat
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def check_id(value: str | None, what: str) -> str:
    if not value or not _ID.match(value):
        raise RejectedInput(
            RejectionCode.BAD_ID,
            f"{what} {value!r} is not a valid id (1-64 characters: letters, digits, '_', '.', '-'; "
            "starting with a letter or digit)",
        )
    return value


def sniff_format(payload: bytes) -> ImageFormat:
    """The image format from the magic number; :class:`RejectedInput` naming what it looks like otherwise."""
    if payload.startswith(JPEG_MAGIC):
        return "jpeg"
    if payload.startswith(PNG_MAGIC):
        return "png"
    raise RejectedInput(
        RejectionCode.UNSUPPORTED_FORMAT,
        f"not a JPEG or PNG image: {_describe(payload)}; only JPEG and PNG are accepted",
    )


def _describe(payload: bytes) -> str:
    head = payload[:16]
    known = {
        b"GIF87a": "a GIF image",
        b"GIF89a": "a GIF image",
        b"BM": "a BMP image",
        b"RIFF": "a RIFF file (WebP?)",
        b"II*\x00": "a TIFF image",
        b"MM\x00*": "a TIFF image",
        b"%PDF": "a PDF document",
    }
    for magic, name in known.items():
        if head.startswith(magic):
            return f"the bytes are {name}"
    text = payload[:64].decode("utf-8", errors="replace")
    if "\ufffd" in text or not all(char.isprintable() or char in "\r\n\t" for char in text):
        return f"unknown binary data starting with {head.hex(' ')}"
    return f"the bytes are text ({text[:40]!r}...)" if len(text) > 40 else f"the bytes are text ({text!r})"


def validate_image(payload: bytes, limits: ImageLimits) -> ImageInfo:
    """Check ``payload`` completely; raise :class:`RejectedInput` with the reason if it is not acceptable."""
    if not payload:
        raise RejectedInput(RejectionCode.EMPTY, "empty payload: expected the bytes of a JPEG or PNG image")
    if len(payload) > limits.max_bytes:
        raise RejectedInput(
            RejectionCode.TOO_LARGE, f"image is {len(payload)} bytes; the limit is {limits.max_bytes} bytes"
        )
    sniffed = sniff_format(payload)
    width, height = _header_size(payload, sniffed, limits)
    _decode_fully(payload, sniffed)
    return ImageInfo(format=sniffed, width=width, height=height)


def _open(payload: bytes) -> Image.Image:
    # Pillow's own bomb guard fires at twice its MAX_IMAGE_PIXELS; ours (max_pixels) is checked right after.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(payload))


def _header_size(payload: bytes, sniffed: ImageFormat, limits: ImageLimits) -> tuple[int, int]:
    """Width and height from the header alone (nothing is decoded yet)."""
    try:
        image = _open(payload)
    except Image.DecompressionBombError as exc:
        raise RejectedInput(
            RejectionCode.TOO_MANY_PIXELS,
            f"image declares more than {limits.max_pixels} pixels (possible decompression bomb, not decoded): {exc}",
        ) from exc
    except UnidentifiedImageError as exc:
        raise RejectedInput(
            RejectionCode.CORRUPT, f"corrupt {sniffed.upper()}: the header is incomplete or unreadable"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise RejectedInput(
            RejectionCode.CORRUPT, f"corrupt {sniffed.upper()}: the header cannot be read ({exc or type(exc).__name__})"
        ) from exc
    with image:
        if image.format != sniffed.upper():
            raise RejectedInput(RejectionCode.CORRUPT, f"starts like a {sniffed.upper()} but decodes as {image.format}")
        width, height = image.size
    if width <= 0 or height <= 0:
        raise RejectedInput(RejectionCode.CORRUPT, f"image declares an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise RejectedInput(
            RejectionCode.TOO_MANY_PIXELS,
            f"image declares {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} "
            "(possible decompression bomb, not decoded)",
        )
    return width, height


def _decode_fully(payload: bytes, sniffed: ImageFormat) -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Some library in this process switched Pillow to accept truncated files; ingest must not.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; ingest refuses to validate with it")
    try:
        if sniffed == "png":
            with _open(payload) as image:
                image.verify()  # chunk CRCs; load() below decodes the pixels
        with _open(payload) as image:
            if sniffed == "jpeg":
                # DCT scaling: every entropy-coded byte is still decoded (so truncation and corruption are caught),
                # only the inverse transform runs at 1/8 size -- 2-3x faster than a full-size decode.
                image.draft("RGB", ((image.width + 7) // 8, (image.height + 7) // 8))
            image.load()
    except Image.DecompressionBombError as exc:
        raise RejectedInput(RejectionCode.TOO_MANY_PIXELS, f"decompression bomb refused: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise RejectedInput(
            RejectionCode.CORRUPT, f"truncated or corrupt {sniffed.upper()}: {exc or type(exc).__name__}"
        ) from exc


def parse_telemetry(payload: bytes, *, max_bytes: int) -> list[TelemetryMessage]:
    """A telemetry message's samples, oldest first: one (``{"readings": {...}, "measured_at": ISO time?,
    "machine_event": ...?}``, or a flat object of readings) or a device's batch (``{"samples": [...]}``).

    The rules are ``edgeloop_common.telemetry.messages``' (the edge agent applies the same ones, docs/telemetry.md);
    ``machine_event``: ``"failure"`` or ``"maintenance"``, the failure model's label.
    """
    try:
        return parse_telemetry_samples(payload, max_bytes=max_bytes)
    except InvalidTelemetryError as exc:
        raise RejectedInput(RejectionCode(exc.code), exc.reason) from exc
