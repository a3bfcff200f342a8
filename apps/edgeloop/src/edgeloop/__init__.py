"""The ``edgeloop`` command line."""
