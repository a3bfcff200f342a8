"""edgeloop_common.ids: random ids without a system call each -- well formed, unique, and not repeated by a
forked child (which would otherwise inherit its parent's generator)."""

from __future__ import annotations

import os
import re
import uuid

from edgeloop_common.bus.kafka import _PARTITIONER, _partition_of
from edgeloop_common.ids import random_hex, random_uuid_str
from edgeloop_common.tracing import new_traceparent


def test_uuids_are_version_4_rfc_4122_and_unique() -> None:
    made = [random_uuid_str() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    for text in made[:2000]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_traceparents_are_w3c_and_never_all_zero_ids() -> None:
    for _ in range(2000):
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", new_traceparent())
    assert all(int(random_hex(1), 16) != 0 for _ in range(5000))  # 1 byte: zero would come up ~20 times


def test_a_forked_child_makes_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, " ".join(random_uuid_str() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    parent = {random_uuid_str() for _ in range(50)}
    assert len(child) == 50 and not child & parent


def test_the_remembered_partition_of_a_key_is_the_producers_own() -> None:
    for index in range(3000):
        key = os.urandom(index % 40 + 1)
        partitions = list(range(index % 7 + 1))
        assert _partition_of(key, partitions) == _PARTITIONER(key, partitions, partitions)
        assert _partition_of(key, partitions) == _PARTITIONER(key, partitions, partitions)  # remembered: the same
