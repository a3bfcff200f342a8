"""Random ids made without a system call each: event ids and trace/span ids, minted per message.

``uuid.uuid4()`` and ``secrets.token_hex`` read the kernel's random source on every call, a system call that
costs ~10-20 µs on a sandboxed or virtualised host -- a noticeable share of a telemetry reading's whole cost
(bench/telemetry.py). These ids must be unique, not unguessable (nothing is secured by them), so they come from a
Mersenne Twister seeded from the kernel's random source once per process (and again in a forked child, which
would otherwise repeat its parent's ids): 122 random bits per UUID, as ``uuid4`` has.
"""

from __future__ import annotations

import os
import random

_random = random.Random()  # seeded from os.urandom
os.register_at_fork(after_in_child=_random.seed)


_VERSION_4 = (0x4 << 76) | (0x8 << 60)  # the version nibble (4) and the RFC 4122 variant bits (10)
_NOT_VERSION_BITS = ~((0xF << 76) | (0xC << 60)) & ((1 << 128) - 1)


def random_uuid_str() -> str:
    """A version 4 (random) UUID as text, made without a ``uuid.UUID`` (event ids: one per event published)."""
    h = f"{(_random.getrandbits(128) & _NOT_VERSION_BITS) | _VERSION_4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as lowercase hex, never all zeros (W3C trace and span ids may not be)."""
    return f"{_random.getrandbits(nbytes * 8) or 1:0{nbytes * 2}x}"
