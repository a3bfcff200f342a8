"""The S3 blob store: image bytes in a bucket of any S3-compatible server, so services on other nodes read them.

Objects are named ``sha256/<aa>/<sha256>`` (content-addressed, spread over 256 prefixes); a blob's URI is
``s3://<bucket>/<key>``. ``put`` refuses bytes that do not hash to the name it is given, sends a Content-MD5 so
the server refuses bytes damaged on the way, and records the sha256 as object metadata; ``get`` hashes what it
read and refuses to hand over an object whose bytes are not its name. The bucket is created when it is absent.

Any S3 endpoint works (AWS, Ceph RGW, SeaweedFS: ``edgeloop infra up`` runs SeaweedFS locally); the client is
boto3, blocking like :class:`~edgeloop_common.blobs.folder.LocalBlobStore` (async callers use a thread).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, SSLError

from edgeloop_common.blobs.store import (
    BlobNotFoundError,
    BlobStoreAccessError,
    BlobStoreUnavailableError,
    BlobTooLargeError,
    check_sha256,
    sha256_hex,
    verify_blob,
)
from edgeloop_common.settings import CommonSettings, ConfigurationError

S3Client = Any  # boto3's clients are built at run time; their types come from stubs we do not install

KEY_PREFIX = "sha256"
# Codes S3 servers answer when the credentials, their rights or the signature are wrong.
ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403"}
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# Readiness asks often; one successful look at the bucket stands for this long.
WRITABLE_CACHE_S = 5.0
PARALLEL_PUTS = 8


def blob_key(sha256: str) -> str:
    """The object key of a blob: ``sha256/<first two hex digits>/<sha256>``."""
    check_sha256(sha256)
    return f"{KEY_PREFIX}/{sha256[:2]}/{sha256}"


@dataclass(frozen=True)
class S3Location:
    """An ``s3://bucket/sha256/aa/<sha256>`` URI taken apart (only content-addressed keys are blobs)."""

    bucket: str
    key: str
    sha256: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
        sha256 = key.rpartition("/")[2]
        try:
            expected = blob_key(sha256)
        except ValueError:
            expected = ""
        if key != expected:
            raise ValueError(f"{uri!r} does not name a blob: the key must be {KEY_PREFIX}/<aa>/<sha256>")
        return cls(parsed.netloc, key, sha256)


def s3_client(settings: CommonSettings) -> S3Client:
    """A boto3 S3 client for the endpoint, region, credentials and CA the settings name."""
    access_key = settings.s3_access_key_id
    secret = settings.s3_secret_access_key.get_secret_value()
    if bool(access_key) != bool(secret):
        missing = "EDGELOOP_S3_SECRET_ACCESS_KEY" if access_key else "EDGELOOP_S3_ACCESS_KEY_ID"
        raise ConfigurationError(
            f"S3 credentials are half set: {missing} is empty (set both, or neither for boto3's own chain)"
        )
    if settings.s3_ca_file is not None and not settings.s3_ca_file.is_file():
        raise ConfigurationError(f"EDGELOOP_S3_CA_FILE={settings.s3_ca_file} is not a file")
    config = Config(
        signature_version="s3v4",
        # Path-style (endpoint/bucket/key): what self-hosted servers serve without wildcard DNS.
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=PARALLEL_PUTS * 2,
        # The integrity check is ours (sha256 of the bytes, Content-MD5 on upload); boto3's default CRC trailers
        # are not understood by every S3-compatible server.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()  # a session of our own: boto3's default one is not thread-safe to create
    return session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region or None,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret or None,
        verify=str(settings.s3_ca_file) if settings.s3_ca_file else None,
        config=config,
    )


class S3BlobStore:
    """Blobs as objects ``sha256/<aa>/<sha256>`` in ``bucket``; see the module's docstring."""

    def __init__(self, client: S3Client, bucket: str, *, create_bucket: bool = True) -> None:
        if not bucket:
            raise ConfigurationError("EDGELOOP_S3_BUCKET is empty: name the bucket that holds the blobs")
        self.client = client
        self.bucket = bucket
        self.create_bucket = create_bucket
        self.endpoint = str(client.meta.endpoint_url)
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()
        self._writable_until = 0.0

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> S3BlobStore:
        return cls(s3_client(settings), settings.s3_bucket)

    # -- the BlobStore port -----------------------------------------------------------------------

    def put(self, data: bytes, *, sha256: str | None = None) -> str:
        sha256 = sha256 or sha256_hex(data)
        self.put_many([(data, sha256)])
        return sha256

    def put_many(self, blobs: Sequence[tuple[bytes, str]]) -> None:
        unique = {sha256: data for data, sha256 in blobs}  # the same picture twice in a batch is one object
        for sha256, data in unique.items():
            check_sha256(sha256)
            verify_blob(data, sha256, f"the blob handed to put as {sha256}")
        self.ensure_bucket()
        if len(unique) == 1:
            [(sha256, data)] = unique.items()
            self._put_one(sha256, data)
            return
        # Round trips dominate: a batch goes up side by side; every one is stored when this returns.
        with ThreadPoolExecutor(max_workers=min(PARALLEL_PUTS, len(unique))) as pool:
            for future in [pool.submit(self._put_one, sha256, data) for sha256, data in unique.items()]:
                future.result()

    def get(self, sha256: str, *, max_bytes: int | None = None) -> bytes:
        key = blob_key(sha256)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            length = int(response.get("ContentLength", 0))
            if max_bytes is not None and length > max_bytes:
                response["Body"].close()
                raise BlobTooLargeError(f"{self.uri(sha256)} has {length} bytes, over the limit of {max_bytes}")
            data: bytes = response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in NOT_FOUND_CODES:
                raise BlobNotFoundError(sha256) from exc
            raise self._translate(exc, f"reading {self.uri(sha256)}") from exc
        verify_blob(data, sha256, self.uri(sha256))
        return data

    def exists(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=blob_key(sha256))
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in NOT_FOUND_CODES:
                return False
            raise self._translate(exc, f"looking for {self.uri(sha256)}") from exc
        return True

    def uri(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{blob_key(sha256)}"

    def writable(self) -> bool:
        if time.monotonic() < self._writable_until:
            return True
        try:
            self._bucket_ready = False  # look again: the bucket may have been removed
            self.ensure_bucket()
        except BlobStoreUnavailableError:
            return False
        self._writable_until = time.monotonic() + WRITABLE_CACHE_S
        return True

    # -- the bucket -------------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """The bucket exists (created now when absent and ``create_bucket``); BlobStoreAccessError says why not."""
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except (ClientError, BotoCoreError) as exc:
                if _code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                    raise self._translate(exc, f"looking at bucket {self.bucket!r}") from exc
                if not self.create_bucket:
                    raise BlobStoreAccessError(
                        f"bucket {self.bucket!r} does not exist at {self.endpoint} (EDGELOOP_S3_BUCKET)"
                    ) from exc
                self._create_bucket()
            self._bucket_ready = True

    def _create_bucket(self) -> None:
        arguments: dict[str, Any] = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        if region and region != "us-east-1":  # S3's rule: us-east-1 takes no location constraint
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**arguments)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                return  # another replica created it a moment ago
            raise self._translate(exc, f"creating bucket {self.bucket!r}") from exc

    # -- helpers ----------------------------------------------------------------------------------

    def _put_one(self, sha256: str, data: bytes) -> None:
        key = blob_key(sha256)
        try:
            if self.exists(sha256):  # content-addressed: the same name holds the same bytes already
                return
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentMD5=base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode(),
                ContentType="application/octet-stream",
                Metadata={"sha256": sha256},
            )
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) == "NoSuchBucket":
                self._bucket_ready = False  # removed under us: the next put creates it again
            raise self._translate(exc, f"writing {self.uri(sha256)}") from exc

    def _translate(self, exc: Exception, doing: str) -> BlobStoreUnavailableError:
        return translate_error(exc, doing, endpoint=self.endpoint, bucket=self.bucket)


def translate_error(exc: Exception, doing: str, *, endpoint: str, bucket: str) -> BlobStoreUnavailableError:
    """A boto3 error as one of ours, with what to check in the message."""
    code = _code(exc)
    if isinstance(exc, NoCredentialsError):
        return BlobStoreAccessError(
            f"{doing}: no S3 credentials; set EDGELOOP_S3_ACCESS_KEY_ID and EDGELOOP_S3_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, SSLError):
        return BlobStoreAccessError(
            f"{doing}: TLS to {endpoint} failed ({exc}); EDGELOOP_S3_CA_FILE names the CA that signed its certificate"
        )
    if code in ACCESS_CODES:
        return BlobStoreAccessError(
            f"{doing}: {endpoint} refused the credentials ({code}: {_message(exc)}); check "
            "EDGELOOP_S3_ACCESS_KEY_ID and EDGELOOP_S3_SECRET_ACCESS_KEY"
        )
    if code == "NoSuchBucket":
        return BlobStoreAccessError(f"{doing}: bucket {bucket!r} does not exist at {endpoint} (EDGELOOP_S3_BUCKET)")
    if code in {"InvalidBucketName", "400"}:
        return BlobStoreAccessError(f"{doing}: {endpoint} answered {code} ({_message(exc)}) for bucket {bucket!r}")
    return BlobStoreUnavailableError(f"{doing}: the S3 store at {endpoint} failed: {code or type(exc).__name__}: {exc}")


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _message(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)
