"""The house's import rules hold: the contracts of pyproject.toml's [tool.importlinter], run as `make lint` runs them.

apps/ on top, then the services (none imports another), then libs/common; no circle between the modules of any
package. A new import that breaks a rule fails here with import-linter's report of the offending chain.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is not installed (requirements-dev.txt)"
    result = subprocess.run(
        [lint_imports, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout, result.stdout[-4000:]


def test_the_contracts_cover_every_package_of_the_house() -> None:
    """A new service or library must join the contracts, or nothing checks its imports."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    declared = set(config["root_packages"])
    packages = {
        source.name
        for folder in ("libs", "services", "apps")
        for source in (REPO / folder).glob("*/src/*")
        if (source / "__init__.py").exists()
    }
    assert packages == declared, f"packages not in [tool.importlinter]: {packages - declared}"


def test_each_service_image_installs_only_libs_common_and_itself() -> None:
    """A service's Dockerfile builds from libs/common and the service alone, and runs the service's own script.

    No Docker engine here to build them; what can go wrong in the house's shape (an image that needs the
    application, or names a script its package does not declare) is read off the files.
    """
    import re
    import tomllib

    for dockerfile in sorted((REPO / "services").glob("*/Dockerfile")):
        service = dockerfile.parent.name
        text = dockerfile.read_text()
        copied = set(re.findall(r"^COPY (?!--from)(\S+) ", text, flags=re.MULTILINE))  # from the context
        assert copied == {"constraints.txt", "libs/common", f"services/{service}"}, (dockerfile, copied)
        command = re.search(r'^CMD \["([^"]+)"', text, flags=re.MULTILINE)
        assert command, f"{dockerfile}: no CMD"
        scripts = tomllib.loads((dockerfile.parent / "pyproject.toml").read_text())["project"]["scripts"]
        assert command.group(1) == f"edgeloop-{service}" in scripts, (dockerfile, command.group(1), scripts)


def test_every_service_counts_its_http_requests_and_shows_the_process_figures() -> None:
    """Each service's app, built as its script builds it, answers /metrics with edgeloop_http_requests_total
    (edgeloop_common.http_metrics) and process_* figures: what an operator's dashboard reads, the same everywhere."""
    import importlib

    from fastapi.testclient import TestClient

    for app_module in sorted((REPO / "services").glob("*/src/*/app.py")):
        package = app_module.parent.name
        settings_cls = importlib.import_module(f"{package}.settings").Settings
        extra = {"site": "site-a"} if package == "edgeloop_edge" else {}
        extra |= {"admin_token": "a-token-long-enough"} if package == "edgeloop_console" else {}
        app = importlib.import_module(f"{package}.app").create_app(settings_cls(**extra))
        client = TestClient(app)  # no lifespan: the app as routes and middleware only
        client.get("/healthz")
        text = client.get("/metrics").text
        assert 'edgeloop_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text, package
        assert "process_resident_memory_bytes" in text, package
