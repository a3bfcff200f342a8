"""libs/common stays light: importing the serving clients and the miners, and building a REST client, imports
neither TensorFlow nor grpc (the gRPC client is imported only when asked for)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("tensorflow", "tensorflow_serving", "grpc", "keras")

PROGRAM = f"""
import asyncio, json, sys
import edgeloop_common.mining
import edgeloop_common.serving
from edgeloop_common.serving import create_model_client

client = create_model_client("rest", rest_url="http://127.0.0.1:9", grpc_target="127.0.0.1:9")
asyncio.run(client.close())
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r})))
"""


def test_importing_serving_and_mining_imports_neither_tensorflow_nor_grpc() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
