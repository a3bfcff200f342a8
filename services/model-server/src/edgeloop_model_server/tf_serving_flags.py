"""``tensorflow_model_server``'s command line, so a manifest or script written for TF Serving runs the lite server
unchanged: ``edgeloop model-server --port=8500 --rest_api_port=8501 --model_name=m --model_base_path=/models/m``.

The flags the lite server has an equivalent for become its settings (over the environment); the others (batching,
SSL, monitoring, ...) are accepted and named in a warning, as they change how TF Serving runs, not what it answers.
As ``tensorflow_model_server`` does, the server then listens on every interface unless ``--host`` or the
environment says otherwise (a container's port is reached from outside it).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# tensorflow_model_server's flag -> (the lite server's setting, how its value reads)
MAPPED: dict[str, tuple[str, type]] = {
    "port": ("grpc_port", int),
    "rest_api_port": ("http_port", int),
    "model_name": ("model_name", str),
    "model_base_path": ("model_dir", Path),
    "model_config_file": ("model_config_file", Path),
    "file_system_poll_wait_seconds": ("poll_interval_s", float),
}
# Polling turned off (TF Serving: a wait <= 0 loads once): the lite server looks again only this seldom.
NO_POLLING_S = 365 * 24 * 3600.0
EVERY_INTERFACE = "0.0.0.0"
HOST_VARIABLES = ("EDGELOOP_MODEL_SERVER_HTTP_HOST", "EDGELOOP_MODEL_SERVER_GRPC_HOST")


class FlagError(ValueError):
    """A flag's value cannot be read (``--port=abc``)."""


@dataclass
class ParsedFlags:
    settings: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # flags of TF Serving's the lite server has no use for
    host: str | None = None  # --host (EdgeLoop's: both listeners)


def parse(argv: Sequence[str], environ: dict[str, str] | None = None) -> ParsedFlags:
    environ = dict(os.environ) if environ is None else environ
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--host")
    for flag in MAPPED:
        parser.add_argument(f"--{flag}")
    known, rest = parser.parse_known_args(list(argv))
    parsed = ParsedFlags(host=known.host, ignored=[arg.split("=", 1)[0] for arg in rest if arg.startswith("--")])
    strays = [arg for arg in rest if not arg.startswith("--") and not _is_value_of_ignored_flag(rest, arg)]
    if strays:
        raise FlagError(f"unexpected argument(s) {strays}: flags are --name=value")
    for flag, (setting, kind) in MAPPED.items():
        raw = getattr(known, flag)
        if raw is None:
            continue
        try:
            value = kind(raw)
        except ValueError:
            raise FlagError(f"--{flag}={raw}: not a {kind.__name__}") from None
        if setting == "poll_interval_s" and isinstance(value, float) and value <= 0:
            value = NO_POLLING_S
        parsed.settings[setting] = value
    if parsed.settings and parsed.host is None and not any(environ.get(name) for name in HOST_VARIABLES):
        parsed.host = EVERY_INTERFACE
    if parsed.host is not None:
        parsed.settings["http_host"] = parsed.settings["grpc_host"] = parsed.host
    return parsed


def _is_value_of_ignored_flag(rest: list[str], arg: str) -> bool:
    """``--enable_batching true``: the value that follows an ignored flag written without '='."""
    index = rest.index(arg)
    return index > 0 and rest[index - 1].startswith("--") and "=" not in rest[index - 1]
