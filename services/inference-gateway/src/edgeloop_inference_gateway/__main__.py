"""``edgeloop-inference-gateway`` (or ``python -m edgeloop_inference_gateway``): run the service in the foreground."""

from edgeloop_common.service_runner import service_main

SUMMARY = "Classifies images through the TF Serving API (HTTP :8082)."


def main() -> None:
    service_main("edgeloop_inference_gateway", SUMMARY)


if __name__ == "__main__":
    main()
