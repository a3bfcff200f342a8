"""The one error ``edgeloop infra`` raises: something a user can read and act on."""

from __future__ import annotations


class InfraError(RuntimeError):
    """A component could not be installed, started or stopped; the message says why and what to do."""
