"""Placeholder: being written."""

HELP = "Not yet available."


def train() -> None:
    raise SystemExit("not yet available")
