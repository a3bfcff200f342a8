"""``edgeloop-model-server`` (or ``python -m edgeloop_model_server``): run the service in the foreground."""

from edgeloop_common.service_runner import service_main

SUMMARY = "TF Serving-compatible lite model server (REST :8501, gRPC :8500)."


def main() -> None:
    service_main("edgeloop_model_server", SUMMARY)


if __name__ == "__main__":
    main()
