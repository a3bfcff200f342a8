"""EdgeLoop's trainer service (docs/trainer.md)."""

import edgeloop_common  # noqa: F401  (before TensorFlow: psycopg's OpenSSL first, see its __init__)
