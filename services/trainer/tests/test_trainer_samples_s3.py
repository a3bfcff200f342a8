"""The trainer reads a labeled sample's ``s3://`` picture straight from the shared store (the real SeaweedFS),
checked against its sha256, without asking ingest; a corrupted one is an unusable sample with the reason."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from edgeloop_common.blobs import BlobReader
from edgeloop_common.blobs.s3 import S3BlobStore
from edgeloop_common.settings import CommonSettings
from edgeloop_trainer.adapters.samples_client import SamplesClient
from edgeloop_trainer.ports import LabeledSample, SampleImageMissingError

pytestmark = pytest.mark.s3


@pytest.fixture
def settings(s3_environment: dict[str, str]) -> CommonSettings:
    values: dict[str, Any] = {name.removeprefix("EDGELOOP_").lower(): value for name, value in s3_environment.items()}
    return CommonSettings.model_validate(values | {"s3_bucket": f"test-tr-{uuid.uuid4().hex[:10]}"})


@pytest.fixture
def store(settings: CommonSettings) -> Iterator[S3BlobStore]:
    blobs = S3BlobStore.from_settings(settings)
    yield blobs
    for item in blobs.client.list_objects_v2(Bucket=blobs.bucket).get("Contents", []):
        blobs.client.delete_object(Bucket=blobs.bucket, Key=item["Key"])
    blobs.client.delete_bucket(Bucket=blobs.bucket)


def sample_of(store: S3BlobStore, data: bytes) -> LabeledSample:
    sha256 = store.put(data)
    # An ingest that does not answer: the picture must not come from there.
    return LabeledSample(
        sample_id="s-1", label="cat", sha256=sha256, blob_uri=store.uri(sha256), image_url="/v1/samples/s-1/image"
    )


async def test_an_s3_picture_is_read_from_the_store_not_from_ingest(
    store: S3BlobStore, settings: CommonSettings
) -> None:
    sample = sample_of(store, b"a labeled picture")
    async with httpx.AsyncClient(base_url="http://127.0.0.1:9") as nowhere:
        client = SamplesClient(nowhere, blobs=BlobReader(settings))
        assert await client.read_image(sample) == b"a labeled picture"
        store.client.put_object(Bucket=store.bucket, Key=sample.blob_uri.split("/", 3)[3], Body=b"damaged")
        with pytest.raises(SampleImageMissingError, match=r"s-1 is unusable.*not served"):
            await client.read_image(sample)
