"""SeaweedFS as `edgeloop infra up` runs it: the binary cached by version, credentials generated for this
installation (owner-only files, anonymous requests refused), settings the services actually have, and S3 that
stores a blob once it is up."""

from __future__ import annotations

import stat
import urllib.error
import urllib.request
from typing import Any

import pytest
from edgeloop import infra
from edgeloop.infra.api import component as infra_component
from edgeloop.infra.seaweedfs import VERSION, SeaweedFS, read_env_file, weed_binary
from edgeloop_common.blobs.s3 import S3BlobStore
from edgeloop_common.settings import CommonSettings

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def seaweedfs() -> SeaweedFS:
    infra.up(["seaweedfs"])  # idempotent: what `make test` did already
    component = infra_component("seaweedfs")
    assert isinstance(component, SeaweedFS)
    return component


def test_it_runs_the_binary_built_for_the_pinned_version(seaweedfs: SeaweedFS) -> None:
    [status] = infra.status(["s3"])
    assert status.running and status.address == "127.0.0.1:8333"
    assert weed_binary().parent.name == f"seaweedfs-{VERSION}" and weed_binary().is_file()
    running = seaweedfs.running_process()
    assert running is not None and running.cmdline()[:2] == [str(weed_binary()), "mini"]
    assert f"-s3.config={seaweedfs.s3_config_file}" in running.cmdline()


def test_the_credentials_are_this_installations_own_and_private(seaweedfs: SeaweedFS) -> None:
    for path in (seaweedfs.s3_config_file, seaweedfs.env_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    settings = read_env_file(seaweedfs.env_file)
    assert len(settings["EDGELOOP_S3_ACCESS_KEY_ID"]) >= 16 and len(settings["EDGELOOP_S3_SECRET_ACCESS_KEY"]) >= 32
    assert settings["EDGELOOP_S3_SECRET_ACCESS_KEY"] in seaweedfs.s3_config_file.read_text()
    with pytest.raises(urllib.error.HTTPError) as refused:  # no anonymous access
        urllib.request.urlopen(f"{seaweedfs.endpoint_url}/", timeout=5)
    assert refused.value.code == 403


def test_its_settings_are_settings_of_the_services_and_store_a_blob(seaweedfs: SeaweedFS) -> None:
    written = read_env_file(seaweedfs.env_file)
    shared = {f"EDGELOOP_{name.upper()}" for name in CommonSettings.model_fields}
    assert set(written) <= shared, set(written) - shared
    values: dict[str, Any] = {name.removeprefix("EDGELOOP_").lower(): value for name, value in written.items()}
    settings = CommonSettings.model_validate(values)
    assert settings.blob_store == "s3" and settings.s3_endpoint_url == seaweedfs.endpoint_url
    store = S3BlobStore.from_settings(settings)
    assert store.get(store.put(b"infra test")) == b"infra test"
