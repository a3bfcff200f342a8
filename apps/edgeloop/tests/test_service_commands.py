"""Every service runs as `edgeloop <service>` and as its own `edgeloop-<service>` script; both document its
environment variables in --help, read off its settings class."""

from __future__ import annotations

import importlib
import os
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


@pytest.mark.parametrize(
    ("argv", "env", "reason"),
    [
        (["edgeloop-edge"], {}, "the edge agent needs its site: --site S or EDGELOOP_EDGE_SITE"),
        (["edgeloop-edge", "--site", "site-a"], {"EDGELOOP_EDGE_JOINT_BUDGET_MS": "-3"}, "joint_budget_ms"),
        (["edgeloop", "edge", "--site", "no/such site"], {}, "invalid site id"),
    ],
    ids=["no-site", "bad-setting", "bad-site-via-edgeloop"],
)
def test_a_service_that_cannot_start_with_its_settings_says_why_and_exits_2(
    argv: list[str], env: dict[str, str], reason: str
) -> None:
    script = Path(sys.executable).with_name(argv[0])
    result = subprocess.run(
        [str(script), *argv[1:]], capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **env}
    )
    assert result.returncode == 2, result.stderr
    assert "cannot start" in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr
