"""tensorflow_model_server's command line on the lite server: the flags it maps, the ones it ignores, and a
manifest's command run unchanged against the real trained model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from edgeloop_model_server.config import from_settings
from edgeloop_model_server.settings import Settings
from edgeloop_model_server.tf_serving_flags import NO_POLLING_S, FlagError, parse

from tests.helpers import free_port


def test_the_flags_tf_serving_has_become_settings_and_the_listeners_open_to_every_interface() -> None:
    parsed = parse(
        ["--port=9000", "--rest_api_port", "9001", "--model_name=catdog", "--model_base_path=/models/catdog"],
        environ={},
    )
    assert parsed.settings == {
        "grpc_port": 9000,
        "http_port": 9001,
        "model_name": "catdog",
        "model_dir": Path("/models/catdog"),
        "http_host": "0.0.0.0",
        "grpc_host": "0.0.0.0",
    }
    # the model's own folder, as TF Serving reads --model_base_path (not <base>/<name>)
    settings = Settings(**parsed.settings)
    assert [model.base_path for model in from_settings(settings)] == [Path("/models/catdog")]


def test_the_environment_or_host_keeps_the_bind_address_and_unknown_tf_flags_are_named() -> None:
    kept = parse(["--rest_api_port=9001"], environ={"EDGELOOP_MODEL_SERVER_HTTP_HOST": "127.0.0.1"})
    assert "http_host" not in kept.settings
    local = parse(["--host=127.0.0.1", "--enable_batching=true", "--monitoring_config_file", "m.cfg"], environ={})
    assert local.settings == {"http_host": "127.0.0.1", "grpc_host": "127.0.0.1"}
    assert local.ignored == ["--enable_batching", "--monitoring_config_file"]
    assert parse(["--file_system_poll_wait_seconds=0"], environ={}).settings["poll_interval_s"] == NO_POLLING_S
    assert parse([], environ={}).settings == {}  # no flags: the environment alone, as before


@pytest.mark.parametrize("argv", [["--port=abc"], ["stray"]])
def test_an_unreadable_flag_is_refused_with_the_reason(argv: list[str]) -> None:
    with pytest.raises(FlagError):
        parse(argv, environ={})


@pytest.mark.tf
@pytest.mark.slow
def test_a_command_written_for_tensorflow_model_server_serves_the_model(
    trained_model_base: Path, trained_model_name: str, tmp_path: Path
) -> None:
    grpc_port, rest_port = free_port(), free_port()
    command = [
        str(Path(sys.executable).with_name("edgeloop")),
        "model-server",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_name={trained_model_name}",
        f"--model_base_path={trained_model_base / trained_model_name}",
        "--file_system_poll_wait_seconds=1",
        "--enable_batching=true",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_MODEL_SERVER_")}
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            try:
                status = httpx.get(f"http://127.0.0.1:{rest_port}/v1/models/{trained_model_name}", timeout=2)
                if status.status_code == 200 and status.json()["model_version_status"][0]["state"] == "AVAILABLE":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(30)
    assert "ignored: --enable_batching" in log.read_text()
