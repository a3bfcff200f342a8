"""W3C Trace Context (``traceparent``) helpers."""

from __future__ import annotations

import re

from edgeloop_common.ids import random_hex

_TRACEPARENT = re.compile(r"^00-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})$")


def new_traceparent(trace_id: str | None = None) -> str:
    """A ``traceparent`` with a fresh span id, continuing ``trace_id`` when given."""
    return f"00-{trace_id or random_hex(16)}-{random_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """Continue the trace of ``parent`` with a new span; start a new trace if it is absent or malformed."""
    match = _TRACEPARENT.match(parent or "")
    return new_traceparent(match["trace"] if match else None)


def trace_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match["trace"] if match else None
