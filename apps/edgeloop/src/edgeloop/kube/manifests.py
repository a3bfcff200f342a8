"""Server-side apply of manifests as EdgeLoop's field manager: what ``edgeloop kube up`` and its real node write."""

from __future__ import annotations

from typing import Any

from kubernetes.client import ApiClient

from edgeloop.kube.errors import KubeError

FIELD_MANAGER = "edgeloop-kube"


def apply_manifests(api: ApiClient, manifests: list[dict[str, Any]]) -> None:
    """Server-side apply each manifest as the ``edgeloop-kube`` field manager."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(api)
    for manifest in manifests:
        resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        try:
            resource.server_side_apply(
                body=manifest,
                name=manifest["metadata"]["name"],
                namespace=manifest["metadata"].get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
        except ApiException as exc:
            raise KubeError(f"applying {manifest['kind']} {manifest['metadata']['name']} failed: {exc}") from exc
