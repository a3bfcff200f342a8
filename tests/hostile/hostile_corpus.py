"""The hostile-input corpus: payloads a device or a client could send, built in code from the real cat/dog photos
(nothing is copied into the repository). docs/hostile-input.md lists them and what each one gets.

Each :class:`Hostile` has a name (the test id), the bytes, and words the refusal's reason contains wherever it is
refused (ingest's dead letter or 4xx, the gateway's 400, the edge agent's rejection).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Hostile:
    name: str
    payload: bytes
    reason: str  # a fragment every service's reason contains (case-insensitive)


def photo_jpeg(photo: Path, *, size: tuple[int, int] = (160, 120), tag: str = "") -> bytes:
    """A small real JPEG of ``photo``; ``tag`` makes its bytes (and sha256) unique."""
    with Image.open(photo) as image:
        small = image.convert("RGB").resize(size)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=85, comment=tag.encode())
    return out.getvalue()


def photo_png(photo: Path, *, size: tuple[int, int] = (160, 120)) -> bytes:
    with Image.open(photo) as image:
        small = image.convert("RGB").resize(size)
    out = io.BytesIO()
    small.save(out, "PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, *, pixels: bytes = b"\x00" * 4096) -> bytes:
    """A well-formed PNG chunk list whose header declares ``width`` x ``height`` (grayscale, 8 bits)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_MAGIC + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(pixels, 9)) + _chunk(b"IEND", b"")


def png_bomb(side: int = 8000) -> bytes:
    """A *real* decompression bomb: a valid ``side`` x ``side`` black PNG (64 million pixels at 8000) that is only
    about 60 KB on the wire; decoding it would take ``side * side`` bytes and more to convert."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + a row of black pixels
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return PNG_MAGIC + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with the dimensions in its frame header rewritten (the scan data unchanged)."""
    data = bytearray(jpeg)
    position = 2
    while position < len(data):
        marker = data[position + 1]
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[position + 5 : position + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        position += 2 + length
    raise ValueError("no SOF marker found")


def png_with_bad_crc(png: bytes) -> bytes:
    data = bytearray(png)
    idat = data.index(b"IDAT")
    data[idat + 8] ^= 0xFF  # a byte of the compressed pixels: the chunk's CRC no longer matches
    return bytes(data)


def _other_format(kind: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(out, kind)
    return out.getvalue()


def image_corpus(photo: Path) -> list[Hostile]:
    """Picture payloads no service may accept (each refused with a reason, nothing stored)."""
    jpeg = photo_jpeg(photo, tag="hostile-base")
    png = photo_png(photo)
    return [
        Hostile("empty", b"", "empty"),
        Hostile("truncated-jpeg", jpeg[: len(jpeg) // 2], "truncated"),
        Hostile("truncated-jpeg-header", jpeg[:40], "JPEG"),
        Hostile("truncated-png", png[: len(png) // 2], "PNG"),
        Hostile("png-bad-crc", png_with_bad_crc(png), "PNG"),
        Hostile("png-declaring-100000x100000", png_declaring(100_000, 100_000), "pixels"),
        Hostile("png-bomb-8000x8000", png_bomb(8000), "decompression bomb"),
        Hostile("jpeg-declaring-65000x65000", jpeg_declaring(jpeg, 65_000, 65_000), "pixels"),
        Hostile("png-declaring-0x0", png_declaring(0, 0), "PNG"),
        Hostile("gif", _other_format("GIF"), "GIF"),
        Hostile("bmp", _other_format("BMP"), "JPEG or PNG"),
        Hostile("pdf", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n", "JPEG or PNG"),
        Hostile("text", b"definitely not a picture", "JPEG or PNG"),
        Hostile("random-bytes", bytes(range(256)) * 4, "JPEG or PNG"),
        Hostile("polyglot-png-magic-jpeg-body", PNG_MAGIC + jpeg[3:], "PNG"),
        Hostile("polyglot-jpeg-magic-gif-body", b"\xff\xd8\xff" + _other_format("GIF"), "JPEG"),
        Hostile("polyglot-pdf-with-jpeg", b"%PDF-1.4\n" + jpeg, "JPEG or PNG"),
    ]


def telemetry_corpus() -> list[Hostile]:
    """Telemetry payloads ingest refuses (dead letter with the reason)."""
    return [
        Hostile("telemetry-empty", b"", "empty"),
        Hostile("telemetry-not-json", b"{broken json", "not JSON"),
        Hostile("telemetry-not-utf8", b'{"readings": {"t": "\xff\xfe"}}', "not JSON"),
        Hostile("telemetry-deeply-nested", b'{"readings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "telemetry"),
        Hostile(
            "telemetry-nested-reading", json.dumps({"readings": {"t": {"a": [1, 2]}}}).encode(), "must be a number"
        ),
        Hostile("telemetry-array", b"[1, 2, 3]", "JSON object"),
        Hostile("telemetry-nan", b'{"readings": {"t": NaN}}', "finite"),
        Hostile("telemetry-oversize", json.dumps({"readings": {"t": "x" * 70_000}}).encode(), "limit"),
        Hostile("telemetry-no-readings", b'{"readings": {}}', "no readings"),
        Hostile("telemetry-extra-field", b'{"readings": {"t": 1}, "shell": "rm -rf /"}', "unexpected field"),
    ]


# Topics a device could publish on that name a site or a device no service accepts (MQTT itself forbids '+' and '#'
# in a topic a client publishes to: paho refuses them before they leave, and a broker disconnects such a client).
BAD_ID_TOPICS = [
    "dt/edgeloop/../cam-1/image",
    "dt/edgeloop/{site}/../image",
    "dt/edgeloop/{site}/.hidden/image",
    "dt/edgeloop/{site}/-cam/image",
    "dt/edgeloop/{site}/cam 1/image",
    "dt/edgeloop/{site}/" + "c" * 65 + "/image",
    "dt/edgeloop/{site}/caméra/image",
    "dt/edgeloop/{site}/cam%2F1/image",
]
# Topics outside the subscription (wrong depth): ingest never receives them, so nothing is stored.
WRONG_DEPTH_TOPICS = [
    "dt/edgeloop/{site}/image",
    "dt/edgeloop/{site}/cam-1/extra/image",
    "dt/edgeloop/{site}/cam-1/image/",
]
