"""Which model, and which version of it, to ask: a model name with a pinned version, a version label, or neither."""

from __future__ import annotations

import re
from dataclasses import dataclass

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")


class RouteConfigError(ValueError):
    """A route in the configuration cannot be understood."""


@dataclass(frozen=True)
class ModelRoute:
    """A model and, optionally, a pinned version or a version label (neither: the latest)."""

    model_name: str
    version: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if not _MODEL_NAME.match(self.model_name):
            raise RouteConfigError(f"invalid model name {self.model_name!r}")
        if self.version is not None and self.label is not None:
            raise RouteConfigError("a route pins a version or a label, not both")
        if self.version is not None and self.version < 0:
            raise RouteConfigError(f"invalid version {self.version}")
        if self.label is not None and not _LABEL.match(self.label):
            raise RouteConfigError(f"invalid version label {self.label!r}")

    @classmethod
    def parse(cls, spec: str) -> ModelRoute:
        """``model``, ``model:3`` (version) or ``model:stable`` (label)."""
        name, _, selector = spec.strip().partition(":")
        return cls.of(name, selector)

    @classmethod
    def of(cls, model_name: str, selector: str = "") -> ModelRoute:
        """``model_name`` with ``selector``: empty (the latest), digits (a version) or a label."""
        selector = selector.strip()
        if not selector:
            return cls(model_name.strip())
        if selector.isdigit():
            return cls(model_name.strip(), version=int(selector))
        return cls(model_name.strip(), label=selector)

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.model_name}:{self.version}"
        if self.label is not None:
            return f"{self.model_name}:{self.label}"
        return self.model_name
