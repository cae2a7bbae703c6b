"""The k8s/ tree agrees with the renderer: job files are its output, names and ports line up."""

import io
import re
import shlex
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from manifest_checks import K8S, OVERLAYS, REPO, kustomize, load_documents

from curvlab.cli.launch import main

RENDERED_FILES = (
    K8S / "base" / "training" / "pytorchjob" / "job.yaml",
    K8S / "base" / "training" / "indexed-job" / "job.yaml",
    K8S / "base" / "training" / "trainjob" / "job.yaml",
    K8S / "overlays" / "dev" / "job.yaml",
)


def _header_command(path: Path) -> list[str]:
    # "# Rendered by: curvlab-launch ARGS \" continued on "#     ARGS" lines.
    command, lines = "", iter(path.read_text().splitlines())
    for line in lines:
        if line.startswith("# Rendered by: curvlab-launch"):
            command = line.removeprefix("# Rendered by: curvlab-launch")
            while command.endswith("\\"):
                command = command[:-1] + next(lines).removeprefix("#")
            break
    assert command, f"{path} has no '# Rendered by:' header"
    return shlex.split(command)


@pytest.mark.parametrize("path", RENDERED_FILES, ids=lambda p: str(p.relative_to(K8S)))
def test_job_files_are_the_renderers_output(path: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(_header_command(path)) == 0
    assert load_documents(path.read_text()) == load_documents(out.getvalue())


def _docs(overlay: str) -> dict[tuple[str, str], dict]:
    return {
        (d["kind"], d["metadata"]["name"]): d for d in kustomize(str(K8S / "overlays" / overlay))
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_namespace_and_images(overlay: str) -> None:
    docs = _docs(overlay)
    namespaced = [d for key, d in docs.items() if key[0] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"curvlab"}

    images = {image for doc in docs.values() for image in _images(doc)}
    # The bare local names were rewritten to a registry by the overlay's `images:`.
    ours = {image for image in images if "/curvlab" in image}
    assert len(ours) == (1 if overlay == "stack" else 2)
    assert not images & {"curvlab:0.1.0", "curvlab-mlflow:0.1.0"}


def _images(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) else []
        return found + [image for value in node.values() for image in _images(value)]
    if isinstance(node, list):
        return [image for item in node for image in _images(item)]
    return []


def test_mlflow_answers_the_hosts_that_clients_use() -> None:
    deployment = _docs("pytorchjob")[("Deployment", "mlflow")]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    hosts = {h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")}
    # In-cluster clients (docs: MLFLOW_TRACKING_URI=http://mlflow:5000) and port-forward.
    assert {"mlflow:5000", "mlflow.curvlab.svc.cluster.local:5000", "localhost:5000"} <= hosts

    service = _docs("pytorchjob")[("Service", "mlflow")]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 5000


def test_network_policies_select_the_pods_they_protect() -> None:
    docs = _docs("dev")
    pod_labels = {}
    for (kind, name), doc in docs.items():
        if kind in ("Deployment", "StatefulSet", "Job"):
            pod_labels[f"{kind}/{name}"] = doc["spec"]["template"]["metadata"]["labels"]

    policies = [d for (kind, _), d in docs.items() if kind == "NetworkPolicy"]
    for workload, labels in pod_labels.items():
        covering = [
            p
            for p in policies
            if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, workload

    mlflow = next(p for p in policies if p["metadata"]["name"] == "mlflow")
    sources = mlflow["spec"]["ingress"][0]["from"]
    assert sources[0] == {
        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "training"}}
    }
    assert "namespaceSelector" in sources[1] and len(sources) == 2


def test_mlflow_server_settings() -> None:
    docs = _docs("pytorchjob")
    pod = docs[("Deployment", "mlflow")]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert {"--app-name=basic-auth", "--serve-artifacts"} <= set(args)
    assert pod["initContainers"][0]["command"][:3] == ["mlflow", "db", "upgrade"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert pod["containers"][0][probe]["httpGet"]["path"] == "/health"

    assert docs[("PodDisruptionBudget", "mlflow")]["spec"]["minAvailable"] == 1
    assert docs[("Deployment", "mlflow")]["spec"]["replicas"] == 2
    postgres = docs[("StatefulSet", "postgres")]["spec"]
    assert postgres["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def _secret_names(node) -> set[str]:
    if isinstance(node, dict):
        names = {node["secretKeyRef"]["name"]} if "secretKeyRef" in node else set()
        if isinstance(node.get("secret"), dict):
            names.add(node["secret"]["secretName"])
        return names.union(*(_secret_names(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_secret_names(item) for item in node))
    return set()


def test_docs_create_every_secret_the_manifests_use() -> None:
    used = set().union(
        *(_secret_names(list(kustomize(str(K8S / "overlays" / o)))) for o in OVERLAYS)
    )
    guide = (REPO / "docs" / "kubernetes.md").read_text()
    created = set(re.findall(r"create secret generic (\S+)", guide))
    assert (
        used
        == created
        == {
            "curvlab-postgres",
            "curvlab-mlflow-server",
            "curvlab-mlflow-auth",
            "curvlab-mlflow",
            "curvlab-minio",
        }
    )
