"""``edgeloop-console`` (or ``python -m edgeloop_console``): run the console in the foreground."""

from edgeloop_common.service_runner import service_main

SUMMARY = "The web console over the services' HTTP APIs, behind one admin token (HTTP :8080)."


def main() -> None:
    service_main("edgeloop_console", SUMMARY)


if __name__ == "__main__":
    main()
