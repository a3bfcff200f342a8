"""``edgeloop-deployer`` (or ``python -m edgeloop_deployer``): run the service in the foreground."""

from edgeloop_common.service_runner import service_main

SUMMARY = "Rolls promoted model versions out to the edge (HTTP :8086)."


def main() -> None:
    service_main("edgeloop_deployer", SUMMARY)


if __name__ == "__main__":
    main()
