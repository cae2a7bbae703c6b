"""Pod security settings shared by rendered jobs and the k8s/ tree, and a walker that checks them.

Every curvlab pod runs as a numeric non-root user with a read-only root filesystem, all Linux
capabilities dropped, no privilege escalation, the runtime's default seccomp profile, no
service-account token and credentials only through Secret references. The constants below are
what :mod:`curvlab.launch.manifests` writes; :func:`iter_pod_specs` and :func:`pod_problems`
check any manifest (core workloads and the PyTorchJob / TrainJob custom resources) against the
same rules, so the k8s/ tree and the renderer cannot drift apart unnoticed.
"""

import re
from collections.abc import Iterator, Mapping
from typing import Any

# Numeric IDs above 10000 stay clear of host users (checkov CKV_K8S_40); the images create them.
RUN_AS_USER = 10001
RUN_AS_GROUP = 10001

POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_GROUP,
    "fsGroup": RUN_AS_GROUP,
    "seccompProfile": {"type": "RuntimeDefault"},
}

CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}

# The service account every training pod uses; it never mounts an API token.
TRAINER_SERVICE_ACCOUNT = "curvlab-trainer"

# Env names that carry credentials and so must come from a Secret, never a literal value.
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_KEY$|CREDENTIAL", re.IGNORECASE)

_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def iter_pod_specs(manifest: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield every pod spec a manifest would create, with a label saying where it sits.

    Covers core workloads (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob), a
    PyTorchJob's replica templates and a TrainJob's runtime patch. For a TrainJob the trainer
    image and env are folded into the patched ``node`` container, since that is the pod the
    runtime will run.

    Args:
        manifest: One Kubernetes object as a dict.

    Yields:
        ``(location, pod_spec)`` pairs, e.g. ``("PyTorchJob/x Worker", {...})``.
    """
    kind = manifest.get("kind", "")
    name = f"{kind}/{manifest.get('metadata', {}).get('name', '?')}"
    spec = manifest.get("spec") or {}

    if kind == "Pod":
        yield name, spec
    elif kind in _POD_TEMPLATE_KINDS:
        yield name, spec["template"]["spec"]
    elif kind == "CronJob":
        yield name, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "PyTorchJob":
        for replica, replica_spec in spec["pytorchReplicaSpecs"].items():
            yield f"{name} {replica}", replica_spec["template"]["spec"]
    elif kind == "TrainJob":
        yield from _trainjob_pod_specs(name, spec)


def _trainjob_pod_specs(name: str, spec: Mapping[str, Any]) -> Iterator[tuple[str, dict]]:
    trainer = spec.get("trainer") or {}
    for patch in spec.get("runtimePatches") or []:
        jobset = patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {})
        for job in jobset.get("replicatedJobs", []):
            pod = dict(job["template"]["spec"]["template"]["spec"])
            containers = []
            for container in pod.get("containers", []):
                merged = dict(container)
                if container["name"] == "node":
                    merged["image"] = trainer.get("image", "")
                    merged["env"] = [*trainer.get("env", []), *container.get("env", [])]
                containers.append(merged)
            pod["containers"] = containers
            yield f"{name} {job['name']}", pod


def _image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and not last.endswith(":latest")


def pod_problems(
    pod: Mapping[str, Any], service_accounts: Mapping[str, bool] | None = None
) -> list[str]:
    """List the ways a pod spec breaks curvlab's pod security rules.

    Args:
        pod: A pod spec (the ``spec`` of a pod template).
        service_accounts: ServiceAccount name to its ``automountServiceAccountToken`` value, for
            pods that leave the token setting to their service account.

    Returns:
        One human-readable line per problem; empty when the pod complies.
    """
    problems = []
    service_accounts = service_accounts or {}

    token = pod.get("automountServiceAccountToken")
    if token is None:
        token = service_accounts.get(pod.get("serviceAccountName", "default"))
    if token is not False:
        problems.append("service-account token is mounted")

    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is set")

    pod_ctx = pod.get("securityContext") or {}
    containers = [*pod.get("initContainers", []), *pod.get("containers", [])]
    if not containers:
        problems.append("no containers")

    for container in containers:
        problems += [f"{container['name']}: {p}" for p in _container_problems(container, pod_ctx)]
    return problems


def _container_problems(container: Mapping[str, Any], pod_ctx: Mapping[str, Any]) -> list[str]:
    problems = []
    ctx = container.get("securityContext") or {}

    def setting(key: str) -> Any:
        # A container's own securityContext wins over the pod's for the shared fields.
        return ctx.get(key, pod_ctx.get(key))

    if setting("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if setting("runAsUser") == 0:
        problems.append("runs as UID 0")
    if (setting("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccomp profile is not RuntimeDefault")
    if ctx.get("readOnlyRootFilesystem") is not True:
        problems.append("root filesystem is writable")
    if ctx.get("allowPrivilegeEscalation") is not False:
        problems.append("privilege escalation is allowed")
    if ctx.get("privileged"):
        problems.append("privileged")

    capabilities = ctx.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append("capabilities are not all dropped")
    if capabilities.get("add"):
        problems.append(f"adds capabilities {capabilities['add']}")

    if not _image_pinned(container.get("image", "")):
        problems.append(f"image {container.get('image')!r} is not pinned to a tag or digest")

    for env in container.get("env", []):
        # A *_FILE variable holds the path of a mounted Secret, not the credential itself.
        if env["name"].endswith("_FILE") or not _SECRET_NAME.search(env["name"]):
            continue
        if "secretKeyRef" not in (env.get("valueFrom") or {}):
            problems.append(f"env {env['name']} is not taken from a Secret")
    return problems
