"""What the console's test modules share: each module's stack of real standalone services with the console in
front (console_testing.ConsoleStack), versions 1-3 of the model registered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from console_testing import ConsoleStack


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    mqtt_broker: tuple[str, int],
    trained_model_base: Path,
    trained_model_name: str,
) -> Iterator[ConsoleStack]:
    model = trained_model_base / trained_model_name / "1"
    running = ConsoleStack(tmp_path_factory.mktemp("console"), mqtt_broker, model).start()
    running.register_versions()
    yield running
    running.stop()
