"""EdgeLoop's contract: event schemas, topics, settings, the bus and telemetry."""

import contextlib

# psycopg's libpq must load its OpenSSL before TensorFlow does: in a process that imported TensorFlow first, the
# first TLS connection to PostgreSQL aborts the process ("free(): invalid pointer": two OpenSSL builds' symbols
# mixed). Every EdgeLoop process imports this package before TensorFlow, so importing psycopg here is enough.
# Not every install has it (an edge agent's image has no database driver).
with contextlib.suppress(ImportError):
    import psycopg  # noqa: F401

__version__ = "0.1.0"
