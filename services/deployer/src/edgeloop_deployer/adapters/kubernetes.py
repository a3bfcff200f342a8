"""The ``kubernetes`` target: server-side apply into one namespace, and a look at the Deployment's rollout.

Only namespace-scoped calls are made (the deployer's Role, helm/edgeloop/templates/deployer-rbac.yaml):
configmaps, services, deployments, replicasets, pods and edgeapplications in ``namespace``.
Server-side apply uses the field manager ``edgeloop-deployer``; it forces a conflict only on an
object that carries our managed-by label, so another owner's object is never taken over.
The synchronous kubernetes client runs in threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Literal

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from edgeloop_deployer.adapters import manifests
from edgeloop_deployer.adapters.manifests import (
    FIELD_MANAGER,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    VERSION_ANNOTATION,
    VERSION_LABEL,
    ServingSpec,
)
from edgeloop_deployer.service import RolloutObservation, TargetError, WorkloadPlan

log = logging.getLogger(__name__)

WorkloadKind = Literal["deployment", "edgeapplication"]
_REQUEST_TIMEOUT_S = 15.0
_PLURALS = {
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    (manifests.KUBEEDGE_API_VERSION, "EdgeApplication"): (
        f"/apis/{manifests.KUBEEDGE_API_VERSION}",
        "edgeapplications",
    ),
}


def api_client_from(kubeconfig: Path | None, context: str | None = None) -> client.ApiClient:
    """The kubeconfig if given; else the in-cluster ServiceAccount; else ~/.kube/config."""
    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig), context=context)
    try:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except ConfigException:
        return config.new_client_from_config(context=context)


class KubernetesApiError(TargetError):
    """The API server answered with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class KubernetesTarget:
    name = "kubernetes"
    rolls_back = True

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        spec: ServingSpec,
        workload: WorkloadKind = "deployment",
        endpoint_template: str = manifests.DEFAULT_ENDPOINT_TEMPLATE,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.spec = spec
        self.workload = workload
        self.endpoint_template = endpoint_template
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        # A canary is a Deployment of one pod beside the group's; KubeEdge's EdgeApplication has no such thing here.
        self.supports_canary = workload == "deployment"

    # --- the port ---

    async def apply(self, plan: WorkloadPlan) -> None:
        await asyncio.to_thread(self._apply, plan)

    async def observe(self, plan: WorkloadPlan) -> RolloutObservation:
        if self.workload == "edgeapplication":
            # No rollout status to read here: KubeEdge's controller expands the EdgeApplication at the edge.
            name = manifests.workload_name(plan.model_name, plan.node_group)
            return RolloutObservation("ready", f"EdgeApplication {name} applied (its rollout is KubeEdge's to report)")
        return await asyncio.to_thread(self._observe, plan)

    async def delete(self, model_name: str, node_group: str) -> bool:
        return await asyncio.to_thread(self._delete, model_name, node_group)

    def endpoint(self, model_name: str, node_group: str) -> str:
        """The group's Service (cluster DNS name, REST port), or what the endpoint template makes of it."""
        return manifests.service_endpoint(
            model_name, node_group, namespace=self.namespace, spec=self.spec, template=self.endpoint_template
        )

    async def delete_canary(self, model_name: str, node_group: str) -> bool:
        return await asyncio.to_thread(self._delete, model_name, node_group, canary=True)

    def canary_endpoint(self, model_name: str, node_group: str) -> str:
        """The canary's own Service (``...-canary``), the same way."""
        return manifests.service_endpoint(
            model_name,
            node_group,
            namespace=self.namespace,
            spec=self.spec,
            template=self.endpoint_template,
            canary=True,
        )

    async def ready(self) -> bool:
        """The API answers and lets us list what we manage in our namespace."""
        kind = "edgeapplications" if self.workload == "edgeapplication" else "deployments"
        await asyncio.to_thread(self._call, "GET", self._collection_path(kind), query={"limit": "1"})
        return True

    async def close(self) -> None:
        await asyncio.to_thread(self.api.close)

    # --- applying ---

    def _apply(self, plan: WorkloadPlan) -> None:
        if self.workload == "edgeapplication":
            self._server_side_apply(manifests.edge_application(plan, self.spec))
            return
        for manifest in manifests.serving_objects(plan, self.spec):
            self._server_side_apply(manifest)
        if self.spec.server_kind == "tf-serving":
            try:
                self._prune_config_maps(plan)
            except (ApiException, HTTPError) as exc:  # leftovers cost nothing; the rollout goes on
                log.warning("could not prune the old model-config ConfigMaps of %s: %s", plan.model_name, exc)

    def _server_side_apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        path = self._object_path(manifest)
        what = f"{manifest['kind']} {manifest['metadata']['name']}"
        try:
            return self._patch_apply(path, manifest, force=False)
        except ApiException as exc:
            if exc.status != 409:
                raise TargetError(f"applying {what} failed: {_reason(exc)}") from exc
            conflict = _reason(exc)
        # Another field manager owns some of our fields. Take them back only if the object is ours.
        existing = self._call("GET", path)
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
            raise TargetError(f"{what} exists and is not managed by {FIELD_MANAGER}; not taking it over: {conflict}")
        log.warning("%s: %s; forcing (the object is ours)", what, conflict)
        try:
            return self._patch_apply(path, manifest, force=True)
        except ApiException as exc:
            raise TargetError(f"applying {what} failed: {_reason(exc)}") from exc

    def _patch_apply(self, path: str, manifest: dict[str, Any], *, force: bool) -> dict[str, Any]:
        query = {"fieldManager": FIELD_MANAGER}
        if force:
            query["force"] = "true"
        return self._call("PATCH", path, query=query, body=manifest, content_type="application/apply-patch+yaml")

    def _prune_config_maps(self, plan: WorkloadPlan) -> None:
        """Delete the per-version ConfigMaps no ReplicaSet with pods still needs (keeping the one just applied)."""
        instance = manifests.workload_name(plan.model_name, plan.node_group, canary=plan.canary)
        selector = f"{INSTANCE_LABEL}={instance}"
        keep = {str(plan.version)}
        for replica_set in self.apps.list_namespaced_replica_set(
            self.namespace, label_selector=selector, _request_timeout=_REQUEST_TIMEOUT_S
        ).items:
            if (replica_set.spec.replicas or 0) > 0 or (replica_set.status.replicas or 0) > 0:
                keep.add((replica_set.spec.template.metadata.labels or {}).get(VERSION_LABEL, ""))
        for config_map in self.core.list_namespaced_config_map(
            self.namespace, label_selector=selector, _request_timeout=_REQUEST_TIMEOUT_S
        ).items:
            if (config_map.metadata.labels or {}).get(VERSION_LABEL) not in keep:
                self._delete_if_present("ConfigMap", config_map.metadata.name)

    # --- observing ---

    def _observe(self, plan: WorkloadPlan) -> RolloutObservation:
        name = manifests.workload_name(plan.model_name, plan.node_group, canary=plan.canary)
        try:
            return self._observe_deployment(name, plan)
        except ApiException as exc:
            raise TargetError(f"reading Deployment {name} and its pods failed: {_reason(exc)}") from exc
        except HTTPError as exc:
            raise TargetError(f"the Kubernetes API is unreachable: {exc}") from exc

    def _observe_deployment(self, name: str, plan: WorkloadPlan) -> RolloutObservation:
        deployment = self.apps.read_namespaced_deployment(name, self.namespace, _request_timeout=_REQUEST_TIMEOUT_S)
        version = (deployment.metadata.annotations or {}).get(VERSION_ANNOTATION)
        if version != str(plan.version):
            return RolloutObservation("progressing", f"Deployment {name} carries version {version}, not {plan.version}")
        status, wanted = deployment.status, deployment.spec.replicas or 0
        if (status.observed_generation or 0) < (deployment.metadata.generation or 0):
            return RolloutObservation("progressing", "waiting for the deployment controller to see the new spec")
        updated, available = status.updated_replicas or 0, status.available_replicas or 0
        total = status.replicas or 0
        if updated == wanted and available == wanted and total == wanted:
            return RolloutObservation("ready", f"{wanted}/{wanted} pods of version {plan.version} ready")
        progress = f"{updated}/{wanted} pods updated to version {plan.version}, {available} available"
        if total > updated:
            progress += f", {total - updated} old still running"
        stuck = self._pod_problems(name, plan.version)
        if stuck:
            progress += f"; {stuck}"
        progressing = next((c for c in status.conditions or [] if c.type == "Progressing"), None)
        # observedGeneration is current, so this condition was computed for our spec, not left from an older one.
        if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
            return RolloutObservation("failed", f"{progressing.message} ({progress})")
        return RolloutObservation("progressing", progress)

    def _pod_problems(self, instance: str, version: int) -> str:
        """Why the new version's pods are not ready, in the kubelet's and the scheduler's words."""
        selector = f"{INSTANCE_LABEL}={instance},{VERSION_LABEL}={version}"
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector, _request_timeout=_REQUEST_TIMEOUT_S
        ).items
        problems: list[str] = []
        for pod in pods:
            if pod.metadata.deletion_timestamp is not None:
                continue
            conditions = {c.type: c for c in pod.status.conditions or []}
            scheduled, ready = conditions.get("PodScheduled"), conditions.get("Ready")
            if scheduled is not None and scheduled.status != "True":
                problems.append(f"pod {pod.metadata.name} not scheduled: {scheduled.message or scheduled.reason}")
            elif ready is not None and ready.status != "True":
                why = ready.message or ready.reason or "readiness probe failing"
                problems.append(f"pod {pod.metadata.name} on {pod.spec.node_name} not ready: {why}")
        return "; ".join(problems[:3])

    # --- deleting ---

    def _delete(self, model_name: str, node_group: str, *, canary: bool = False) -> bool:
        name = manifests.workload_name(model_name, node_group, canary=canary)
        if self.workload == "edgeapplication" and not canary:
            return self._delete_if_present("EdgeApplication", name)
        removed = [self._delete_if_present(kind, name) for kind in ("Deployment", "Service")]
        selector = f"{INSTANCE_LABEL}={name}"
        config_maps = self._call("GET", self._collection_path("configmaps"), query={"labelSelector": selector})
        for item in config_maps.get("items", []):
            removed.append(self._delete_if_present("ConfigMap", item["metadata"]["name"]))
        return any(removed)

    def _delete_if_present(self, kind: str, name: str) -> bool:
        api_version = {"Deployment": "apps/v1", "EdgeApplication": manifests.KUBEEDGE_API_VERSION}.get(kind, "v1")
        path = self._object_path({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}})
        try:
            self._call("DELETE", path, body={"propagationPolicy": "Background"}, raw=True)
        except KubernetesApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # --- HTTP ---

    def _object_path(self, manifest: dict[str, Any]) -> str:
        prefix, plural = _PLURALS[(manifest["apiVersion"], manifest["kind"])]
        return f"{prefix}/namespaces/{self.namespace}/{plural}/{manifest['metadata']['name']}"

    def _collection_path(self, plural: str) -> str:
        prefix = next(p for p, name in _PLURALS.values() if name == plural)
        return f"{prefix}/namespaces/{self.namespace}/{plural}"

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> dict[str, Any]:
        """One API request; ApiException for the caller on PATCH apply, TargetError otherwise."""
        try:
            response = self.api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=_REQUEST_TIMEOUT_S,
            )
        except ApiException as exc:
            if content_type == "application/apply-patch+yaml":
                raise
            raise KubernetesApiError(f"{method} {path}: {_reason(exc)}", exc.status) from exc
        except HTTPError as exc:
            raise TargetError(f"the Kubernetes API is unreachable: {exc}") from exc
        if raw:
            return {}
        return dict(json.loads(response.data or b"{}"))


def _reason(exc: ApiException) -> str:
    """The API server's own message (``Status.message``) and code."""
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    return f"{message} ({exc.status} {exc.reason})"
