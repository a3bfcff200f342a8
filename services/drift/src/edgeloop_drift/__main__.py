"""``edgeloop-drift`` (or ``python -m edgeloop_drift``): run the service in the foreground."""

from edgeloop_common.service_runner import service_main

SUMMARY = "Data and concept drift (PSI, KS, ADWIN) per model and site (HTTP :8085)."


def main() -> None:
    service_main("edgeloop_drift", SUMMARY)


if __name__ == "__main__":
    main()
