"""``edgeloop-edge --site S`` (or ``python -m edgeloop_edge``): run a site's edge agent in the foreground."""

from edgeloop_common.service_runner import service_main

SUMMARY = "Edge agent of one site: answers its devices at the edge, joint inference, store-and-forward (HTTP :8087)."
FLAGS = ("site",)  # settings given as command-line flags too (--site S), over EDGELOOP_EDGE_SITE


def main() -> None:
    service_main("edgeloop_edge", SUMMARY, flags=FLAGS)


if __name__ == "__main__":
    main()
