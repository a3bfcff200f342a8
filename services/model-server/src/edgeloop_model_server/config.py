"""Which models to serve, from where, which versions and under which labels.

Two sources, like TF Serving:

* the settings (one model): ``MODEL_BASE_PATH/MODEL_NAME`` holds the versions,
  ``MODEL_VERSION_POLICY`` (``latest:N``, ``all``, ``specific:1,2``) and
  ``VERSION_LABELS`` (``stable=1,canary=2``);
* a TF Serving model config file (``model_config_list`` in protobuf text
  format), parsed with TF Serving's own proto, so the same file works with the
  official ``tensorflow/serving`` image. There ``base_path`` is the folder that
  holds the version folders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeloop_model_server.settings import Settings

PolicyKind = Literal["latest", "all", "specific"]


class ConfigError(ValueError):
    """The model configuration cannot be used (bad policy, label or config file)."""


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ``ServableVersionPolicy``: which of the versions on disk are served."""

    kind: PolicyKind = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, candidates: set[int]) -> set[int]:
        if self.kind == "all":
            return set(candidates)
        if self.kind == "specific":
            return candidates & set(self.versions)
        return set(sorted(candidates)[-self.num_versions :]) if self.num_versions else set()

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num_versions}"
        if self.kind == "specific":
            return "specific:" + ",".join(str(v) for v in sorted(self.versions))
        return "all"


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: Path  # the folder holding the integer version folders
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: Mapping[str, int] = field(default_factory=dict)


def parse_policy(text: str) -> VersionPolicy:
    kind, _, argument = text.strip().partition(":")
    kind = kind.strip().lower()
    try:
        if kind == "latest":
            number = int(argument) if argument.strip() else 1
            if number < 1:
                raise ConfigError(f"'latest' needs at least one version, got {number}")
            return VersionPolicy("latest", num_versions=number)
        if kind == "all" and not argument.strip():
            return VersionPolicy("all")
        if kind == "specific":
            versions = frozenset(int(part) for part in argument.split(",") if part.strip())
            if not versions:
                raise ConfigError("'specific' needs at least one version, e.g. specific:1,2")
            return VersionPolicy("specific", versions=versions)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"version policy {text!r}: versions must be integers") from exc
    raise ConfigError(f"version policy {text!r}: expected 'latest:N', 'all' or 'specific:1,2'")


def parse_labels(text: str) -> dict[str, int]:
    labels: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        label, separator, version = item.partition("=")
        if not separator or not label.strip() or not version.strip().isdigit():
            raise ConfigError(f"version label {item!r}: expected LABEL=VERSION, e.g. stable=1")
        labels[label.strip()] = int(version)
    return labels


def from_settings(settings: Settings) -> list[ModelConfig]:
    if settings.model_config_file is not None:
        return read_model_config_file(settings.model_config_file)
    return [
        ModelConfig(
            name=settings.model_name,
            base_path=settings.model_dir or settings.model_base_path / settings.model_name,
            policy=parse_policy(settings.model_version_policy),
            labels=parse_labels(settings.version_labels),
        )
    ]


def read_model_config_file(path: Path) -> list[ModelConfig]:
    """Parse a TF Serving ``--model_config_file`` (``model_config_list { config { ... } }``)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read model config file {path}: {exc}") from exc
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"model config file {path}: {exc}") from exc
    return configs_from_proto(config, f"model config file {path}")


def configs_from_proto(config: Any, where: str) -> list[ModelConfig]:
    """The models of a ``ModelServerConfig`` (a config file's, or a HandleReloadConfigRequest's)."""
    if not config.HasField("model_config_list") or not config.model_config_list.config:
        raise ConfigError(f"{where} has no model_config_list entries")
    models = [_model_from_proto(entry) for entry in config.model_config_list.config]
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where} names a model twice: {names}")
    return models


def _model_from_proto(entry: object) -> ModelConfig:
    name = getattr(entry, "name", "")
    base_path = getattr(entry, "base_path", "")
    if not name or not base_path:
        raise ConfigError(f"every model config needs a name and a base_path (got name={name!r})")
    platform = getattr(entry, "model_platform", "")
    if platform and platform != "tensorflow":
        raise ConfigError(f"model {name}: only model_platform 'tensorflow' is served, got {platform!r}")
    proto_policy = entry.model_version_policy  # type: ignore[attr-defined]
    which = proto_policy.WhichOneof("policy_choice")
    if which == "all":
        policy = VersionPolicy("all")
    elif which == "specific":
        policy = VersionPolicy("specific", versions=frozenset(proto_policy.specific.versions))
    elif which == "latest":
        policy = VersionPolicy("latest", num_versions=proto_policy.latest.num_versions or 1)
    else:
        policy = VersionPolicy()
    labels = dict(entry.version_labels)  # type: ignore[attr-defined]
    return ModelConfig(name=name, base_path=Path(base_path), policy=policy, labels=labels)
