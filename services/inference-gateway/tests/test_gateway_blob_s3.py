"""The gateway's fetcher on ``s3://`` blobs of the real SeaweedFS: read and checked against the event's sha256; a
corrupted object is dead-lettered at once with the reason, a refused key pair is transient (retried) and says
which setting to fix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from edgeloop_common.blobs import BlobReader
from edgeloop_common.blobs.s3 import S3BlobStore
from edgeloop_common.events import BlobRef
from edgeloop_common.settings import CommonSettings
from edgeloop_inference_gateway.adapters.blob_fetch import UriBlobFetcher
from edgeloop_inference_gateway.ports import BlobIntegrityError, BlobNotFoundError, BlobUnavailableError
from gateway_fakes import jpeg_bytes
from pydantic import SecretStr

pytestmark = pytest.mark.s3


@pytest.fixture
def settings(s3_environment: dict[str, str]) -> CommonSettings:
    values: dict[str, Any] = {name.removeprefix("EDGELOOP_").lower(): value for name, value in s3_environment.items()}
    return CommonSettings.model_validate(values | {"s3_bucket": f"test-gw-{uuid.uuid4().hex[:10]}"})


@pytest.fixture
def store(settings: CommonSettings) -> Iterator[S3BlobStore]:
    blobs = S3BlobStore.from_settings(settings)
    yield blobs
    for item in blobs.client.list_objects_v2(Bucket=blobs.bucket).get("Contents", []):
        blobs.client.delete_object(Bucket=blobs.bucket, Key=item["Key"])
    blobs.client.delete_bucket(Bucket=blobs.bucket)


def ref_of(store: S3BlobStore, data: bytes) -> BlobRef:
    sha256 = store.put(data)
    return BlobRef(sha256=sha256, uri=store.uri(sha256), content_type="image/jpeg", size_bytes=len(data))


async def test_an_s3_blob_is_fetched_and_checked(store: S3BlobStore, settings: CommonSettings) -> None:
    data = jpeg_bytes()
    ref = ref_of(store, data)
    fetcher = UriBlobFetcher(max_bytes=10_000_000, reader=BlobReader(settings))
    try:
        assert await fetcher.fetch(ref) == data
        gone = ref.model_copy(update={"sha256": "e" * 64, "uri": f"s3://{store.bucket}/sha256/ee/{'e' * 64}"})
        with pytest.raises(BlobNotFoundError, match="blob not found"):
            await fetcher.fetch(gone)
    finally:
        await fetcher.close()


async def test_a_corrupted_object_is_a_permanent_integrity_error(store: S3BlobStore, settings: CommonSettings) -> None:
    ref = ref_of(store, jpeg_bytes())
    store.client.put_object(Bucket=store.bucket, Key=ref.uri.split("/", 3)[3], Body=b"not the picture")
    fetcher = UriBlobFetcher(max_bytes=10_000_000, reader=BlobReader(settings))
    try:
        with pytest.raises(BlobIntegrityError, match=f"not {ref.sha256}"):
            await fetcher.fetch(ref)
    finally:
        await fetcher.close()


async def test_refused_credentials_are_transient_and_name_the_setting(
    store: S3BlobStore, settings: CommonSettings
) -> None:
    ref = ref_of(store, jpeg_bytes())
    wrong = settings.model_copy(update={"s3_secret_access_key": SecretStr("not-the-secret")})
    fetcher = UriBlobFetcher(max_bytes=10_000_000, reader=BlobReader(wrong))
    try:
        with pytest.raises(BlobUnavailableError, match="EDGELOOP_S3_SECRET_ACCESS_KEY"):
            await fetcher.fetch(ref)
    finally:
        await fetcher.close()
