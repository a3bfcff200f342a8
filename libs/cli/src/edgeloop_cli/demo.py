"""Placeholder: being written."""

HELP = "Not yet available."


def demo() -> None:
    raise SystemExit("not yet available")
