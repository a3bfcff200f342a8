"""``edgeloop-registry`` (or ``python -m edgeloop_registry``): run the service in the foreground."""

from edgeloop_common.service_runner import service_main

SUMMARY = "Models, versions, aliases and the promotion policy (HTTP :8083)."


def main() -> None:
    service_main("edgeloop_registry", SUMMARY)


if __name__ == "__main__":
    main()
