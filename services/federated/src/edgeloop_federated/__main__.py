"""``edgeloop-federated`` (or ``python -m edgeloop_federated``): run the service in the foreground."""

from edgeloop_common.service_runner import service_main

SUMMARY = "Federated training across sites with Flower: trainings, rounds, registration (HTTP :8088, Flower :8089)."


def main() -> None:
    service_main("edgeloop_federated", SUMMARY)


if __name__ == "__main__":
    main()
