"""An MQTT broker for standalone mode: the local Mosquitto if installed, else an embedded one.

Standalone mode must run on a machine with nothing but Python, so when the
``mosquitto`` binary is missing we run amqtt (a pure-Python MQTT 3.1.1 broker)
inside the demo's event loop. Either way the broker listens on 127.0.0.1 only
and is stopped with the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.processes import pick_port

log = logging.getLogger(__name__)


def free_port(preferred: int) -> int:
    """``preferred`` if it is free, else any free port the kernel gives."""
    return pick_port(preferred)


async def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s") from None
            await asyncio.sleep(0.1)


@dataclass
class LocalBroker:
    """A running broker; ``kind`` is ``mosquitto`` or ``embedded``."""

    kind: str
    host: str
    port: int
    _process: asyncio.subprocess.Process | None = None
    _embedded: Any = None
    _workdir: Path | None = field(default=None, repr=False)

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 5)
            except TimeoutError:
                self._process.kill()
        if self._embedded is not None:
            with contextlib.suppress(Exception):  # shutting down a broker whose clients vanished
                await self._embedded.shutdown()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


async def start_local_broker(port: int = 1883, *, prefer: str = "auto") -> LocalBroker:
    """Start Mosquitto (``prefer`` = auto|mosquitto) or the embedded broker (auto without mosquitto|embedded)."""
    port = free_port(port)
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if prefer in ("auto", "mosquitto") and mosquitto:
        workdir = Path(tempfile.mkdtemp(prefix="edgeloop-mqtt-"))
        config = workdir / "mosquitto.conf"
        config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\nmax_inflight_messages 1000\n"
        )
        # Its own session: Ctrl-C in the demo's terminal stops the services first, and they stop the broker.
        process = await asyncio.create_subprocess_exec(
            mosquitto, "-c", str(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        await wait_for_port(port)
        return LocalBroker("mosquitto", "127.0.0.1", port, _process=process, _workdir=workdir)
    if prefer == "mosquitto":
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto), use --broker embedded")

    from amqtt.broker import Broker

    broker_config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "sys_interval": 0,
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        broker = Broker(broker_config)
    await broker.start()
    await wait_for_port(port)
    return LocalBroker("embedded", "127.0.0.1", port, _embedded=broker)
