"""The bus tests' helpers now live in tests/helpers.py, shared by every package, and the ``kafka_topics`` fixture
in the root conftest.py. Re-exported here for modules that still write ``from conftest import ...``."""

from tests.helpers import FAST_GROUP, RawRecord, eventually
from tests.helpers import read_topic_records as read_records

__all__ = ["FAST_GROUP", "RawRecord", "eventually", "read_records"]
