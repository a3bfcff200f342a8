"""``edgeloop-ingest`` (or ``python -m edgeloop_ingest``): run the service in the foreground."""

from edgeloop_common.service_runner import service_main

SUMMARY = "MQTT -> Kafka bridge and sample store (HTTP :8081)."


def main() -> None:
    service_main("edgeloop_ingest", SUMMARY)


if __name__ == "__main__":
    main()
