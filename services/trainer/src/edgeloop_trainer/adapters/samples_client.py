"""Ingest's sample API (docs/learning-loop.md, "Ingest additions"): labeled samples and their images."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
from edgeloop_common.blobs import (
    BlobIntegrityError,
    BlobNotFoundError,
    BlobReader,
    BlobStoreUnavailableError,
    UnsupportedBlobUriError,
)

from edgeloop_trainer.ports import LabeledSample, SampleImageMissingError, SamplesUnavailableError

PAGE_SIZE = 500


class SamplesClient:
    """``client`` has ingest's base URL (``http://ingest:8081``); the caller owns and closes it.

    Images are read from the blob URI when it is a local file this process can
    read (standalone mode, a shared volume) or an ``s3://`` object and ``blobs``
    is given (the shared S3 store, checked against its sha256), otherwise fetched
    from ingest's ``image_url``.
    """

    def __init__(
        self, client: httpx.AsyncClient, *, page_size: int = PAGE_SIZE, blobs: BlobReader | None = None
    ) -> None:
        self.client = client
        self.page_size = page_size
        self.blobs = blobs

    async def labeled_samples(self) -> list[LabeledSample]:
        samples: list[LabeledSample] = []
        cursor: str | None = None
        while True:
            params = {"labeled": "true", "limit": str(self.page_size)}
            if cursor:
                params["after"] = cursor
            page = await self._get_json("/v1/samples", params)
            for sample in page["samples"]:
                if sample.get("label"):
                    samples.append(
                        LabeledSample(
                            sample_id=sample["sample_id"],
                            label=sample["label"],
                            sha256=sample["sha256"],
                            blob_uri=sample.get("blob_uri", ""),
                            image_url=sample.get("image_url") or f"/v1/samples/{sample['sample_id']}/image",
                        )
                    )
            cursor = page.get("next")
            if not cursor or not page["samples"]:
                return samples

    async def read_image(self, sample: LabeledSample) -> bytes:
        local = _local_file(sample.blob_uri)
        if local is not None:
            return await asyncio.to_thread(local.read_bytes)
        if self.blobs is not None and sample.blob_uri.startswith("s3://"):
            try:
                return await asyncio.to_thread(self.blobs.read, sample.blob_uri, sha256=sample.sha256)
            except (BlobNotFoundError, BlobIntegrityError) as exc:
                raise SampleImageMissingError(f"the image of sample {sample.sample_id} is unusable: {exc}") from exc
            except BlobStoreUnavailableError as exc:
                raise SamplesUnavailableError(f"the blob store cannot be read: {exc}") from exc
            except UnsupportedBlobUriError:
                pass  # not a blob key of ours: ingest serves it
        try:
            response = await self.client.get(sample.image_url)
        except httpx.HTTPError as exc:
            raise SamplesUnavailableError(f"ingest unreachable at {self.client.base_url}: {exc}") from exc
        if response.status_code == httpx.codes.NOT_FOUND:
            raise SampleImageMissingError(f"ingest has no image for sample {sample.sample_id} (404)")
        if not response.is_success:
            raise SamplesUnavailableError(f"ingest answered {response.status_code} for {sample.image_url}")
        return response.content

    async def _get_json(self, path: str, params: dict[str, str]) -> dict:  # type: ignore[type-arg]
        try:
            response = await self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise SamplesUnavailableError(f"ingest unreachable at {self.client.base_url}: {exc}") from exc
        if not response.is_success:
            raise SamplesUnavailableError(
                f"ingest answered {response.status_code} to GET {path}: {response.text[:300]}"
            )
        body: dict = response.json()  # type: ignore[type-arg]
        return body


def _local_file(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    path = Path(unquote(parsed.path))
    return path if path.is_file() else None
