"""``edgeloop-trainer`` (or ``python -m edgeloop_trainer``): run the service in the foreground."""

from edgeloop_common.service_runner import service_main

SUMMARY = "Snapshots, training runs, evaluation and registration (HTTP :8084)."


def main() -> None:
    service_main("edgeloop_trainer", SUMMARY)


if __name__ == "__main__":
    main()
