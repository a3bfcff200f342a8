"""Every service runs as `edgeloop <service>` and as its own `edgeloop-<service>` script; both document its
environment variables in --help, read off its settings class."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from edgeloop.main import app
from edgeloop.services import SERVICE_PACKAGES
from edgeloop_common.settings import CommonSettings
from typer.testing import CliRunner


def _assert_documents_variables(package: str, help_text: str) -> None:
    text = " ".join(help_text.split())  # rich and argparse wrap and pad; compare words
    settings = importlib.import_module(f"{package}.settings").Settings
    prefix = settings.model_config["env_prefix"]
    for name in settings.model_fields:
        if name != "common":
            assert f"{prefix}{name.upper()}" in text
    for name in CommonSettings.model_fields:
        assert f"EDGELOOP_{name.upper()}" in text


@pytest.mark.parametrize(("command", "package"), SERVICE_PACKAGES.items(), ids=list(SERVICE_PACKAGES))
def test_each_service_command_help_lists_its_own_and_the_shared_variables(command: str, package: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    _assert_documents_variables(package, result.output)


@pytest.mark.parametrize(("command", "package"), SERVICE_PACKAGES.items(), ids=list(SERVICE_PACKAGES))
def test_each_service_has_its_own_script_without_the_edgeloop_command(command: str, package: str) -> None:
    """A service's container image installs only edgeloop-common and the service: its script must stand alone."""
    script = Path(sys.executable).with_name(f"edgeloop-{command}")
    assert script.exists(), f"{script} missing: is {package} installed with its [project.scripts]?"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    _assert_documents_variables(package, result.stdout)
