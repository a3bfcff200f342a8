"""The blob store's shared parts without a server: the folder store's integrity checks, reading by URI,
S3 URIs taken apart, the factory, and settings that cannot work refused with the setting's name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from edgeloop_common.blobs import (
    BlobIntegrityError,
    BlobNotFoundError,
    BlobReader,
    BlobTooLargeError,
    LocalBlobStore,
    UnsupportedBlobUriError,
    describe_blob_store,
    open_blob_store,
)
from edgeloop_common.blobs.s3 import S3BlobStore, S3Location, blob_key
from edgeloop_common.settings import CommonSettings, ConfigurationError
from pydantic import SecretStr


def test_the_folder_store_refuses_a_wrong_name_and_a_corrupted_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(BlobIntegrityError, match="not " + "0" * 64):
        store.put(b"bytes", sha256="0" * 64)
    assert list(tmp_path.rglob("*")) == []

    sha256 = store.put(b"the real picture")
    store.path(sha256).write_bytes(b"the fake picture")
    with pytest.raises(BlobIntegrityError, match="not served"):
        store.get(sha256)
    with pytest.raises(BlobIntegrityError):
        BlobReader(CommonSettings()).read(store.uri(sha256))


def test_the_reader_reads_this_nodes_files_by_uri(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = b"a picture on this node"
    uri = store.uri(store.put(data))
    reader = BlobReader(CommonSettings())
    assert reader.read(uri) == data
    with pytest.raises(BlobTooLargeError):
        reader.read(uri, max_bytes=3)
    with pytest.raises(BlobNotFoundError):
        reader.read((tmp_path / ("e" * 64)).as_uri())
    with pytest.raises(UnsupportedBlobUriError, match="another host"):
        reader.read(f"file://elsewhere/{'e' * 64}")
    with pytest.raises(UnsupportedBlobUriError, match="scheme gs"):
        reader.read("gs://bucket/key")
    plain = tmp_path / "cat.jpg"
    plain.write_bytes(data)
    with pytest.raises(UnsupportedBlobUriError, match="does not name a blob"):
        reader.read(plain.as_uri())
    assert reader.read(plain.as_uri(), sha256=hashlib.sha256(data).hexdigest()) == data


def test_s3_uris_name_content_addressed_keys_only() -> None:
    sha256 = hashlib.sha256(b"x").hexdigest()
    assert blob_key(sha256) == f"sha256/{sha256[:2]}/{sha256}"
    location = S3Location.parse(f"s3://pictures/sha256/{sha256[:2]}/{sha256}")
    assert (location.bucket, location.key, location.sha256) == ("pictures", blob_key(sha256), sha256)
    for wrong in (
        "s3://bucket/key",
        f"s3://bucket/sha256/00/{sha256}",  # the prefix is not the hash's
        f"s3:///sha256/{sha256[:2]}/{sha256}",  # no bucket
        f"http://bucket/sha256/{sha256[:2]}/{sha256}",
    ):
        with pytest.raises(ValueError):
            S3Location.parse(wrong)


def test_the_factory_picks_the_store_the_settings_name(tmp_path: Path) -> None:
    assert isinstance(open_blob_store(CommonSettings(), folder=tmp_path), LocalBlobStore)
    s3 = CommonSettings(
        blob_store="s3",
        s3_endpoint_url="http://127.0.0.1:1",
        s3_bucket="pictures",
        s3_access_key_id="key",
        s3_secret_access_key=SecretStr("secret"),
    )
    store = open_blob_store(s3, folder=tmp_path)  # no network until it is used
    assert isinstance(store, S3BlobStore) and store.bucket == "pictures"
    assert describe_blob_store(s3, folder=tmp_path) == "s3://pictures at http://127.0.0.1:1"
    assert "secret" not in describe_blob_store(s3, folder=tmp_path)


def test_the_settings_come_from_edgeloop_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("EDGELOOP_BLOB_STORE", "s3")
    monkeypatch.setenv("EDGELOOP_S3_ENDPOINT_URL", "https://s3.example:9000")
    monkeypatch.setenv("EDGELOOP_S3_SECRET_ACCESS_KEY", "hidden")
    monkeypatch.setenv("EDGELOOP_S3_CA_FILE", str(ca))
    settings = CommonSettings()
    assert settings.blob_store == "s3" and settings.s3_endpoint_url == "https://s3.example:9000"
    assert settings.s3_ca_file == ca and "hidden" not in repr(settings)
    monkeypatch.setenv("EDGELOOP_BLOB_STORE", "minio")
    with pytest.raises(ValueError, match="'folder' or 's3'"):
        CommonSettings()


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"s3_access_key_id": "key"}, "EDGELOOP_S3_SECRET_ACCESS_KEY is empty"),
        ({"s3_secret_access_key": SecretStr("secret")}, "EDGELOOP_S3_ACCESS_KEY_ID is empty"),
        ({"s3_bucket": ""}, "EDGELOOP_S3_BUCKET is empty"),
        ({"s3_ca_file": Path("/nonexistent/ca.pem")}, "EDGELOOP_S3_CA_FILE=/nonexistent/ca.pem is not a file"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_the_settings_name(values: dict[str, object], reason: str) -> None:
    settings = CommonSettings.model_validate({"blob_store": "s3", "s3_endpoint_url": "http://127.0.0.1:1"} | values)
    with pytest.raises(ConfigurationError, match=reason):
        open_blob_store(settings, folder=Path("."))
