"""The S3 blob store against the real SeaweedFS that `edgeloop infra up` runs: content-addressed keys, the bucket
made when absent, integrity checked on the way in and out, and clear reasons when the settings are wrong."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from edgeloop_common.blobs import (
    BlobIntegrityError,
    BlobNotFoundError,
    BlobReader,
    BlobStoreAccessError,
    BlobTooLargeError,
    UnsupportedBlobUriError,
    open_blob_store,
)
from edgeloop_common.blobs.s3 import S3BlobStore, s3_client
from edgeloop_common.settings import CommonSettings
from pydantic import SecretStr

pytestmark = pytest.mark.s3


def settings_of(environment: dict[str, str], **overrides: Any) -> CommonSettings:
    values: dict[str, Any] = {name.removeprefix("EDGELOOP_").lower(): value for name, value in environment.items()}
    return CommonSettings.model_validate(values | overrides)


@pytest.fixture
def settings(s3_environment: dict[str, str]) -> Iterator[CommonSettings]:
    """The store's settings with a bucket of this test's own (not created yet), emptied and removed afterwards."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    yield settings_of(s3_environment, s3_bucket=bucket)
    client = s3_client(settings_of(s3_environment))
    listed = client.list_objects_v2(Bucket=bucket) if _bucket_exists(client, bucket) else None
    if listed is not None:
        for item in listed.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)


def _bucket_exists(client: Any, bucket: str) -> bool:
    return any(entry["Name"] == bucket for entry in client.list_buckets().get("Buckets", []))


def test_put_creates_the_bucket_and_stores_under_the_content_address(settings: CommonSettings) -> None:
    store = open_blob_store(settings, folder=None)  # type: ignore[arg-type]  # s3: no folder needed
    assert isinstance(store, S3BlobStore)
    assert not _bucket_exists(store.client, settings.s3_bucket)
    data = b"\xff\xd8 a picture " + uuid.uuid4().bytes
    sha256 = hashlib.sha256(data).hexdigest()
    assert not store.exists(sha256)

    assert store.put(data) == sha256

    assert _bucket_exists(store.client, settings.s3_bucket)
    assert store.exists(sha256)
    assert store.get(sha256) == data
    assert store.uri(sha256) == f"s3://{settings.s3_bucket}/sha256/{sha256[:2]}/{sha256}"
    head = store.client.head_object(Bucket=settings.s3_bucket, Key=f"sha256/{sha256[:2]}/{sha256}")
    assert head["Metadata"]["sha256"] == sha256 and head["ContentLength"] == len(data)
    assert store.writable()


def test_put_many_stores_each_blob_once(settings: CommonSettings) -> None:
    store = S3BlobStore.from_settings(settings)
    uploads: list[str] = []
    store.client.meta.events.register("before-call.s3.PutObject", lambda **_: uploads.append("PUT"))
    blobs = [(f"image {index}".encode(), hashlib.sha256(f"image {index}".encode()).hexdigest()) for index in range(12)]
    store.put(blobs[3][0])
    assert len(uploads) == 1

    store.put_many([*blobs, blobs[0]])  # one stored before, one twice in the batch

    assert len(uploads) == 12, "each new picture uploaded once, the stored one not again"
    store.put(blobs[5][0])  # and again later: content-addressed, nothing to upload
    assert len(uploads) == 12
    listed = store.client.list_objects_v2(Bucket=settings.s3_bucket)["Contents"]
    assert sorted(item["Key"] for item in listed) == sorted(f"sha256/{sha[:2]}/{sha}" for _, sha in blobs)
    for data, sha256 in blobs:
        assert store.get(sha256) == data


def test_a_wrong_name_is_refused_before_anything_is_written(settings: CommonSettings) -> None:
    store = S3BlobStore.from_settings(settings)
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(BlobIntegrityError, match="not " + wrong):
        store.put(b"these bytes", sha256=wrong)
    assert not store.exists(wrong)


def test_a_corrupted_object_is_an_error_with_the_reason_never_served(settings: CommonSettings) -> None:
    store = S3BlobStore.from_settings(settings)
    data = b"the real picture"
    sha256 = store.put(data)
    # Someone (a bad disk, a hand) changes the object behind the store's back.
    store.client.put_object(Bucket=settings.s3_bucket, Key=f"sha256/{sha256[:2]}/{sha256}", Body=b"the fake picture")

    with pytest.raises(BlobIntegrityError, match=f"not {sha256}.*not served"):
        store.get(sha256)
    with pytest.raises(BlobIntegrityError):
        BlobReader(settings).read(store.uri(sha256))


def test_the_reader_takes_any_nodes_s3_uri_and_checks_it(settings: CommonSettings) -> None:
    store = S3BlobStore.from_settings(settings)
    data = b"a picture from another node"
    uri = store.uri(store.put(data))
    reader = BlobReader(settings)

    assert reader.read(uri) == data
    with pytest.raises(BlobTooLargeError, match="over the limit of 5"):
        reader.read(uri, max_bytes=5)
    with pytest.raises(UnsupportedBlobUriError, match="names blob"):
        reader.read(uri, sha256="0" * 64)
    missing = "f" * 64
    with pytest.raises(BlobNotFoundError):
        reader.read(f"s3://{settings.s3_bucket}/sha256/ff/{missing}")
    with pytest.raises(UnsupportedBlobUriError, match="does not name a blob"):
        reader.read(f"s3://{settings.s3_bucket}/photos/cat.jpg")


def test_a_missing_bucket_is_named_when_reading(settings: CommonSettings) -> None:
    reader = BlobReader(settings)  # reads never create a bucket
    with pytest.raises(BlobStoreAccessError, match=f"bucket '{settings.s3_bucket}' does not exist.*EDGELOOP_S3_BUCKET"):
        reader.read(f"s3://{settings.s3_bucket}/sha256/aa/{'a' * 64}")
    store = S3BlobStore(s3_client(settings), settings.s3_bucket, create_bucket=False)
    with pytest.raises(BlobStoreAccessError, match="does not exist"):
        store.put(b"x")
    assert not store.writable()


def test_wrong_credentials_are_named(settings: CommonSettings) -> None:
    wrong = settings.model_copy(update={"s3_secret_access_key": SecretStr("nope")})
    store = S3BlobStore.from_settings(wrong)
    with pytest.raises(BlobStoreAccessError, match=r"refused the credentials.*EDGELOOP_S3_SECRET_ACCESS_KEY"):
        store.put(b"x")
    assert not store.writable()
    unknown = settings.model_copy(update={"s3_access_key_id": "NOSUCHKEY"})
    with pytest.raises(BlobStoreAccessError, match=r"refused the credentials \(403"):
        S3BlobStore.from_settings(unknown).exists("0" * 64)


def test_no_credentials_at_all_are_named(settings: CommonSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    none = settings.model_copy(update={"s3_access_key_id": "", "s3_secret_access_key": SecretStr("")})
    with pytest.raises(BlobStoreAccessError, match="no S3 credentials; set EDGELOOP_S3_ACCESS_KEY_ID"):
        S3BlobStore.from_settings(none).put(b"x")


def test_an_unreachable_endpoint_is_unavailable_not_missing(settings: CommonSettings) -> None:
    from edgeloop_common.blobs import BlobStoreUnavailableError

    from tests.helpers import free_port

    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    store = S3BlobStore.from_settings(down)
    with pytest.raises(BlobStoreUnavailableError, match="failed") as caught:
        store.get("0" * 64)
    assert not isinstance(caught.value, BlobStoreAccessError)
