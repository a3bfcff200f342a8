"""The ``edgeloop`` command line."""

import edgeloop_common  # noqa: F401  (before any TensorFlow: psycopg's OpenSSL first, see its __init__)
