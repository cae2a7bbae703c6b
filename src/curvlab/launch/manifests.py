"""Render Kubernetes manifests for a multi-node curvlab training job.

Three kinds of job run the same pod: a Kubeflow ``PyTorchJob`` (training operator v1), a plain
Indexed ``Job`` with a headless Service for clusters without an operator, and a Kubeflow Trainer
v2 ``TrainJob``. In every kind the container runs ``torchrun --no-python curvlab-train <hydra
overrides>``; torchrun takes its node count, node rank and rendezvous address from the ``PET_*``
variables that the operator injects (or that the Indexed Job sets itself).

The run contract shared by all ranks and restarts: Hydra writes to the fixed directory
``/checkpoints/<name>/run`` on a volume that outlives pods, checkpoints land below
``/checkpoints/<name>``, ``ckpt_path=auto`` resumes from the newest ``last.ckpt`` there (or starts
fresh) and the MLflow run is named after the job.
"""

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from curvlab import __version__
from curvlab.launch.security import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    TRAINER_SERVICE_ACCOUNT,
)

Kind = Literal["pytorchjob", "indexed-job", "trainjob"]
KINDS: tuple[Kind, ...] = ("pytorchjob", "indexed-job", "trainjob")

CHECKPOINT_DIR = "/checkpoints"  # mount point of the checkpoint volume in every pod
HOME_DIR = "/home/curvlab"  # the image user's home; ~/.mlflow/credentials is mounted below it
PYTORCHJOB_PORT = 23456  # the training operator's default rendezvous port
RDZV_PORT = 29500  # torchrun's default master port, used by the Indexed Job
TRAINJOB_RUNTIME = "torch-distributed"  # ClusterTrainingRuntime shipped with Kubeflow Trainer

# Justified checkov skips for the Indexed Job; checkov reads them from these annotations (it
# does not scan custom resources such as the PyTorchJob, which the security walker covers).
TRAINING_CHECKOV_SKIPS = {
    "checkov.io/skip1": "CKV_K8S_35=only the tracking URI is an env var; credentials are a file",
    "checkov.io/skip2": "CKV_K8S_43=pinned by tag; set digests per cluster with kustomize images",
}


@dataclass(frozen=True)
class LaunchSpec:
    """What to run where: the job's shape, image, storage and Hydra overrides.

    Attributes:
        name: Job name (a DNS label); also the MLflow run name and the checkpoint sub-directory.
        nodes: Pods taking part, one per node.
        gpus_per_node: GPUs (and so torchrun processes) per pod; 0 trains on CPU, one process.
        image: Training image, pinned by tag or digest.
        namespace: Namespace for the objects; None leaves it to kubectl or kustomize.
        checkpoint_claim: PersistentVolumeClaim mounted at /checkpoints (ReadWriteMany when
            nodes > 1, since every pod writes to the shared Hydra directory).
        mlflow_secret: Secret with the ``MLFLOW_TRACKING_URI`` and ``credentials`` keys.
        cpu: CPU request and limit per pod.
        memory: Memory request and limit per pod.
        shm_size: Size of the in-memory /dev/shm that data-loader workers share tensors through.
        overrides: Hydra overrides passed to ``curvlab-train`` after the job's own.
    """

    name: str = "curvlab-train"
    nodes: int = 1
    gpus_per_node: int = 1
    image: str = f"curvlab:{__version__}"
    namespace: str | None = None
    checkpoint_claim: str = "curvlab-checkpoints"
    mlflow_secret: str = "curvlab-mlflow"
    cpu: str = "8"
    memory: str = "64Gi"
    shm_size: str = "16Gi"
    overrides: tuple[str, ...] = field(default_factory=tuple)

    @property
    def procs_per_node(self) -> int:
        """torchrun processes per pod: one per GPU, or one on CPU."""
        return max(self.gpus_per_node, 1)


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def hydra_overrides(spec: LaunchSpec) -> list[str]:
    """The Hydra overrides every rank of the job gets, the user's last.

    The job's own overrides fix one output directory for all ranks and restarts, resume from its
    newest checkpoint and log to the MLflow server named in the Secret. A user override of the
    same key replaces the job's.

    Args:
        spec: The job to render.

    Returns:
        Overrides in the order ``curvlab-train`` receives them.
    """
    job_dir = f"{CHECKPOINT_DIR}/{spec.name}"
    managed = [
        "trainer=ddp",
        f"paths.log_dir={job_dir}",
        f"hydra.run.dir={job_dir}/run",
        "ckpt_path=auto",
        "logger.tracking_uri=${oc.env:MLFLOW_TRACKING_URI}",
        f"logger.run_name={spec.name}",
    ]
    if spec.gpus_per_node == 0:
        managed.append("trainer.accelerator=cpu")

    user_keys = {_override_key(o) for o in spec.overrides}
    kept = [o for o in managed if _override_key(o) not in user_keys]
    return [*kept, *spec.overrides]


def labels(spec: LaunchSpec) -> dict[str, str]:
    """Labels on the job and its pods; the training NetworkPolicy selects the component label."""
    return {
        "app.kubernetes.io/name": "curvlab",
        "app.kubernetes.io/component": "training",
        "curvlab.io/job": spec.name,
    }


def _metadata(spec: LaunchSpec, name: str, annotations: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name}
    if spec.namespace:
        meta["namespace"] = spec.namespace
    meta["labels"] = labels(spec)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _resources(spec: LaunchSpec) -> dict[str, dict[str, Any]]:
    amounts: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus_per_node:
        amounts["nvidia.com/gpu"] = spec.gpus_per_node
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _volume_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "checkpoints", "mountPath": CHECKPOINT_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "mlflow-credentials", "mountPath": f"{HOME_DIR}/.mlflow", "readOnly": True},
    ]


def _volumes(spec: LaunchSpec) -> list[dict[str, Any]]:
    return [
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": spec.checkpoint_claim}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "8Gi"}},
        {
            "name": "mlflow-credentials",
            "secret": {
                "secretName": spec.mlflow_secret,
                "items": [{"key": "credentials", "path": "credentials"}],
                "defaultMode": 0o440,  # written as 288: readable by the pod's fsGroup only
            },
        },
    ]


def _secret_env(spec: LaunchSpec) -> list[dict[str, Any]]:
    ref = {"name": spec.mlflow_secret, "key": "MLFLOW_TRACKING_URI"}
    return [{"name": "MLFLOW_TRACKING_URI", "valueFrom": {"secretKeyRef": ref}}]


def _container(spec: LaunchSpec, name: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "image": spec.image,
        "imagePullPolicy": "Always",
        # The image's entrypoint is torchrun; these are its arguments.
        "args": ["--no-python", "curvlab-train", *hydra_overrides(spec)],
        "env": [*env, *_secret_env(spec)],
        "resources": _resources(spec),
        "volumeMounts": _volume_mounts(),
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
    }


def _pod_spec(spec: LaunchSpec, containers: list[dict[str, Any]], **extra: Any) -> dict:
    return {
        **extra,
        "serviceAccountName": TRAINER_SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "containers": containers,
        "volumes": _volumes(spec),
    }


def service_account(spec: LaunchSpec) -> dict[str, Any]:
    """The training pods' service account, which never mounts an API token."""
    meta = _metadata(spec, TRAINER_SERVICE_ACCOUNT)
    del meta["labels"]["curvlab.io/job"]
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        "automountServiceAccountToken": False,
    }


def render_pytorchjob(spec: LaunchSpec) -> list[dict[str, Any]]:
    """A PyTorchJob: one Master and ``nodes - 1`` Workers, each running torchrun."""
    container = _container(spec, "pytorch", env=[])
    container["ports"] = [{"name": "pytorchjob-port", "containerPort": PYTORCHJOB_PORT}]
    template = {"metadata": {"labels": labels(spec)}, "spec": _pod_spec(spec, [container])}

    # OnFailure restarts a crashed container in place; the job then resumes from last.ckpt.
    # A crashed peer fails the other pods within seconds (their connections are reset); a peer
    # lost from the network fails them only after trainer.strategy.timeout (conf/trainer/ddp.yaml,
    # 30 min by default). tests/launch/test_pods.py measures both.
    # TODO(elastic-restart): static rendezvous has no peer heartbeat, so a partitioned job waits
    # out the whole DDP timeout; whether an elasticPolicy with c10d rendezvous re-forms it sooner
    # is not measured yet.
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if spec.nodes > 1:
        replicas["Worker"] = {
            "replicas": spec.nodes - 1,
            "restartPolicy": "OnFailure",
            "template": template,
        }

    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "nprocPerNode": str(spec.procs_per_node),
            "runPolicy": {
                "backoffLimit": 3,
                "ttlSecondsAfterFinished": 7 * 24 * 3600,
                "cleanPodPolicy": "Running",
            },
            "pytorchReplicaSpecs": replicas,
        },
    }
    return [service_account(spec), job]


def render_indexed_job(spec: LaunchSpec) -> list[dict[str, Any]]:
    """An Indexed Job plus the headless Service through which pod 0 is found for rendezvous."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "clusterIP": "None",
            # Ranks must find pod 0 before any of them is ready.
            "publishNotReadyAddresses": True,
            "selector": {"curvlab.io/job": spec.name},
            "ports": [{"name": "rendezvous", "port": RDZV_PORT, "targetPort": RDZV_PORT}],
        },
    }

    # Indexed Job pods are named <job>-<index> and resolvable under the Service's subdomain.
    index_ref = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    env = [
        {"name": "PET_NNODES", "value": str(spec.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(spec.procs_per_node)},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": index_ref}}},
        {"name": "PET_MASTER_ADDR", "value": f"{spec.name}-0.{spec.name}"},
        {"name": "PET_MASTER_PORT", "value": str(RDZV_PORT)},
    ]
    container = _container(spec, "pytorch", env=env)
    container["ports"] = [{"name": "rendezvous", "containerPort": RDZV_PORT}]
    pod = _pod_spec(spec, [container], subdomain=spec.name, restartPolicy="OnFailure")

    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(spec, spec.name, TRAINING_CHECKOV_SKIPS),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.nodes,
            "parallelism": spec.nodes,
            "backoffLimit": 3 * spec.nodes,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {"metadata": {"labels": labels(spec)}, "spec": pod},
        },
    }
    return [service_account(spec), service, job]


def render_trainjob(spec: LaunchSpec) -> list[dict[str, Any]]:
    """A Kubeflow Trainer v2 TrainJob on the cluster's ``torch-distributed`` runtime.

    The runtime owns the pod template; a runtime patch adds curvlab's security settings,
    volumes and service account to its ``node`` container.
    """
    container = _container(spec, "node", env=[])
    pod = _pod_spec(spec, [])
    del pod["automountServiceAccountToken"]  # not patchable; the service account turns it off
    pod["containers"] = [
        {
            "name": "node",
            "securityContext": container["securityContext"],
            "volumeMounts": container["volumeMounts"],
        }
    ]
    # The runtime's JobSet names its trainer job and container "node".
    patched_job = {
        "name": "node",
        "template": {"spec": {"template": {"metadata": {"labels": labels(spec)}, "spec": pod}}},
    }
    job = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "runtimeRef": {"name": TRAINJOB_RUNTIME},
            "trainer": {
                "image": spec.image,
                "command": ["torchrun"],
                "args": container["args"],
                "env": container["env"],
                "numNodes": spec.nodes,
                "numProcPerNode": spec.procs_per_node,
                "resourcesPerNode": container["resources"],
            },
            "runtimePatches": [
                {
                    "manager": "curvlab.io/launch",
                    "trainingRuntimeSpec": {
                        "template": {"spec": {"replicatedJobs": [patched_job]}}
                    },
                }
            ],
        },
    }
    return [service_account(spec), job]


def render(spec: LaunchSpec, kind: Kind = "pytorchjob") -> list[dict[str, Any]]:
    """Render every object the job needs, in the order ``kubectl apply`` should create them.

    Args:
        spec: The job to render.
        kind: ``pytorchjob``, ``indexed-job`` or ``trainjob``.

    Returns:
        Kubernetes objects as dicts.
    """
    renderers = {
        "pytorchjob": render_pytorchjob,
        "indexed-job": render_indexed_job,
        "trainjob": render_trainjob,
    }
    if kind not in renderers:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    return renderers[kind](spec)


class _ManifestDumper(yaml.SafeDumper):
    # Replica templates share dicts; kubectl accepts YAML anchors, but people reading it should not
    # have to resolve them.
    def ignore_aliases(self, data: Any) -> bool:
        return True

    # Indent list items under their key, as kubectl and yamllint's default rules expect.
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """Dump objects as one multi-document YAML stream, keys in the order they were built."""
    return yaml.dump_all(
        documents, Dumper=_ManifestDumper, sort_keys=False, default_flow_style=False, width=4096
    )
