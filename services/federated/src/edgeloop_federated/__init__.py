"""EdgeLoop federated training (docs/telemetry.md, "Federated learning").

The cloud runs a Flower server for each training; every site runs a Flower client on its own ``SiteHistory``.
Only model weights, sample counts and aggregate counts cross the channel; raw readings stay on the site.
"""

import os

import edgeloop_common  # noqa: F401  (before TensorFlow: psycopg's OpenSSL first, see its __init__)

# Flower reports usage to its vendor unless told not to; nothing here may call out (and there is no internet).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
