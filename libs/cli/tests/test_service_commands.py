"""Every service command documents its environment variables in --help, read off its settings class."""

from __future__ import annotations

import importlib

import pytest
from edgeloop_cli.main import app
from edgeloop_cli.services import SERVICES
from edgeloop_common.settings import CommonSettings
from typer.testing import CliRunner


@pytest.mark.parametrize("spec", SERVICES, ids=[spec.command for spec in SERVICES])
def test_each_service_help_lists_its_own_and_the_shared_variables(spec) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, [spec.command, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps and pads; compare words
    settings = importlib.import_module(f"{spec.package}.settings").Settings
    prefix = settings.model_config["env_prefix"]
    for name in settings.model_fields:
        if name != "common":
            assert f"{prefix}{name.upper()}" in text
    for name in CommonSettings.model_fields:
        assert f"EDGELOOP_{name.upper()}" in text
