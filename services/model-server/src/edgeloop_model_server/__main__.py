"""``edgeloop-model-server`` (or ``python -m edgeloop_model_server``): run the service in the foreground.

Configured by its ``EDGELOOP_MODEL_SERVER_*`` variables and, over them, ``tensorflow_model_server``'s flags
(:mod:`edgeloop_model_server.tf_serving_flags`): ``--port`` is gRPC and ``--rest_api_port`` REST, as in TF Serving.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from edgeloop_common.service_runner import env_help, run_service

SUMMARY = "TF Serving-compatible lite model server (REST :8501, gRPC :8500)."
FLAGS_HELP = (
    "Flags (tensorflow_model_server's, over the environment): --port=GRPC_PORT --rest_api_port=REST_PORT "
    "--model_name=NAME --model_base_path=MODEL_DIR (the folder of version folders) --model_config_file=FILE "
    "--file_system_poll_wait_seconds=S; --host=ADDRESS binds both (with TF flags and no host set: 0.0.0.0, "
    "as TF Serving). Other TF Serving flags are accepted and ignored with a warning."
)


def main(argv: Sequence[str] | None = None) -> None:
    from edgeloop_model_server.settings import Settings
    from edgeloop_model_server.tf_serving_flags import FlagError, parse

    arguments = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(arguments):
        print(f"usage: edgeloop-model-server [--host ADDRESS] [TF Serving flags]\n\n{SUMMARY}\n\n{FLAGS_HELP}\n")
        print(env_help(Settings))
        return
    try:
        flags = parse(arguments)
    except FlagError as exc:
        print(f"edgeloop-model-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if flags.ignored:
        logging.getLogger("edgeloop_model_server").warning(
            "TF Serving flags the lite server has no use for, ignored: %s", ", ".join(flags.ignored)
        )
    run_service("edgeloop_model_server", settings=flags.settings)


if __name__ == "__main__":
    main()
