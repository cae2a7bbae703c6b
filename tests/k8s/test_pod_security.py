"""Every pod template, custom resources included, meets curvlab's pod security rules."""

import copy

import pytest
from manifest_checks import K8S, OVERLAYS, kustomize

from curvlab.launch.manifests import KINDS, LaunchSpec, render
from curvlab.launch.security import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    RUN_AS_USER,
    iter_pod_specs,
    pod_problems,
)

# Pods each overlay must contain, by where the walker finds them.
EXPECTED_PODS = {
    "stack": {"Deployment/mlflow", "StatefulSet/postgres"},
    "pytorchjob": {
        "Deployment/mlflow",
        "StatefulSet/postgres",
        "PyTorchJob/curvlab-train Master",
        "PyTorchJob/curvlab-train Worker",
    },
    "indexed-job": {"Deployment/mlflow", "StatefulSet/postgres", "Job/curvlab-train"},
    "trainjob": {"Deployment/mlflow", "StatefulSet/postgres", "TrainJob/curvlab-train node"},
    "dev": {
        "Deployment/mlflow",
        "StatefulSet/postgres",
        "StatefulSet/minio",
        "Job/minio-bucket",
        "Job/curvlab-dev",
    },
}


def _service_accounts(documents) -> dict[str, bool]:
    return {
        doc["metadata"]["name"]: doc.get("automountServiceAccountToken", True)
        for doc in documents
        if doc["kind"] == "ServiceAccount"
    }


def _problems(documents) -> tuple[set[str], list[str]]:
    accounts = _service_accounts(documents)
    found, problems = set(), []
    for doc in documents:
        for where, pod in iter_pod_specs(doc):
            found.add(where)
            problems += [f"{where}: {p}" for p in pod_problems(pod, accounts)]
    return found, problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_of_every_overlay_is_locked_down(overlay: str) -> None:
    documents = kustomize(str(K8S / "overlays" / overlay))
    found, problems = _problems(documents)
    assert found == EXPECTED_PODS[overlay]
    assert problems == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gpus", [0, 8])
def test_every_rendered_job_is_locked_down(kind: str, gpus: int) -> None:
    documents = render(LaunchSpec(nodes=2, gpus_per_node=gpus, image="r/curvlab:1"), kind)
    found, problems = _problems(documents)
    assert found and problems == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_share_the_same_security_contexts(overlay: str) -> None:
    # The hand-written base pods use the renderer's settings, container by container.
    for doc in kustomize(str(K8S / "overlays" / overlay)):
        for where, pod in iter_pod_specs(doc):
            pod_ctx = pod["securityContext"]
            assert pod_ctx["runAsUser"] == RUN_AS_USER, where
            expected = {k: v for k, v in POD_SECURITY_CONTEXT.items() if k in pod_ctx}
            assert pod_ctx == expected, where
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                assert container["securityContext"] == CONTAINER_SECURITY_CONTEXT, where


def test_no_secret_objects_and_only_example_secret_files() -> None:
    for overlay in OVERLAYS:
        kinds = {doc["kind"] for doc in kustomize(str(K8S / "overlays" / overlay))}
        assert "Secret" not in kinds

    # Real secret files made from the examples sit beside them, ignored by git.
    ignore = (K8S / "secrets" / ".gitignore").read_text().split()
    assert ignore[-3:] == ["*", "!.gitignore", "!*.example"]
    examples = {p.name for p in (K8S / "secrets").glob("*.example")}
    assert examples == {
        "mlflow-credentials.example",
        "mlflow-server.env.example",
        "basic_auth.ini.example",
        "postgres-password.example",
        "minio.env.example",
    }
    assert all("change-me" in (K8S / "secrets" / name).read_text() for name in examples)


def _env_file_keys(name: str) -> set[str]:
    lines = (K8S / "secrets" / name).read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


def test_secret_keys_used_exist_in_the_examples() -> None:
    used: dict[str, set[str]] = {}
    for overlay in OVERLAYS:
        for doc in kustomize(str(K8S / "overlays" / overlay)):
            for _, pod in iter_pod_specs(doc):
                for container in [*pod.get("initContainers", []), *pod["containers"]]:
                    for env in container.get("env", []):
                        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                        if ref:
                            used.setdefault(ref["name"], set()).add(ref["key"])

    assert used["curvlab-mlflow-server"] <= _env_file_keys("mlflow-server.env.example")
    assert used["curvlab-minio"] <= _env_file_keys("minio.env.example")
    assert used["curvlab-mlflow"] == {"MLFLOW_TRACKING_URI"}


def _locked_pod() -> dict:
    documents = render(LaunchSpec(image="r/curvlab:1"), "pytorchjob")
    return copy.deepcopy(next(iter_pod_specs(documents[1]))[1])


def _container_ctx(pod: dict) -> dict:
    return pod["containers"][0]["securityContext"]


def _run_as_root(pod: dict) -> None:
    pod["securityContext"].pop("runAsNonRoot")
    _container_ctx(pod).pop("runAsNonRoot")


BROKEN = {
    "token": (lambda p: p.pop("automountServiceAccountToken"), "service-account token"),
    "root": (_run_as_root, "runAsNonRoot is not true"),
    "uid0": (lambda p: p["securityContext"].update(runAsUser=0), "runs as UID 0"),
    "seccomp": (lambda p: p["securityContext"].pop("seccompProfile"), "seccomp"),
    "rw-root": (lambda p: _container_ctx(p).update(readOnlyRootFilesystem=False), "writable"),
    "escalation": (lambda p: _container_ctx(p).pop("allowPrivilegeEscalation"), "escalation"),
    "caps": (lambda p: _container_ctx(p)["capabilities"].update(drop=["NET_RAW"]), "not all"),
    "latest": (lambda p: p["containers"][0].update(image="r/curvlab:latest"), "not pinned"),
    "untagged": (lambda p: p["containers"][0].update(image="r/curvlab"), "not pinned"),
    "env-secret": (
        lambda p: p["containers"][0]["env"].append({"name": "DB_PASSWORD", "value": "x"}),
        "DB_PASSWORD is not taken from a Secret",
    ),
    "host-net": (lambda p: p.update(hostNetwork=True), "hostNetwork is set"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_walker_flags_each_broken_rule(case: str) -> None:
    break_it, problem = BROKEN[case]
    pod = _locked_pod()
    assert pod_problems(pod, {}) == []
    break_it(pod)
    assert any(problem in line for line in pod_problems(pod, {}))


def test_token_setting_may_come_from_the_service_account() -> None:
    pod = _locked_pod()
    del pod["automountServiceAccountToken"]
    assert pod_problems(pod, {"curvlab-trainer": False}) == []
    assert pod_problems(pod, {"curvlab-trainer": True}) == ["service-account token is mounted"]
