"""curvlab-launch: the manifests it renders, the overrides it passes on, and --apply."""

import os
import shlex
import stat
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from curvlab.cli.launch import main
from curvlab.config import CONFIG_DIR
from curvlab.launch.manifests import LaunchSpec, hydra_overrides


def render(capsys: pytest.CaptureFixture[str], command: str) -> list[dict]:
    assert main(shlex.split(command)) == 0
    return [doc for doc in yaml.safe_load_all(capsys.readouterr().out) if doc]


def by_kind(documents: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in documents}


def test_pytorchjob_shape_and_overrides(capsys, manifest_checks) -> None:
    # Options may follow the overrides, as with curvlab-train.
    command = "--nodes 3 --gpus-per-node 8 --name vit-run model=vit trainer.max_epochs=5"
    docs = render(capsys, command + " --image reg/curvlab:1.2.3")
    assert [d["kind"] for d in docs] == ["ServiceAccount", "PyTorchJob"]
    job = by_kind(docs)["PyTorchJob"]
    assert manifest_checks.crd_errors(job) == []

    spec = job["spec"]
    assert spec["nprocPerNode"] == "8"
    assert spec["runPolicy"]["backoffLimit"] == 3
    assert spec["runPolicy"]["ttlSecondsAfterFinished"] == 7 * 24 * 3600
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2

    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch"
    assert container["image"] == "reg/curvlab:1.2.3"
    assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["args"] == [
        "--no-python",
        "curvlab-train",
        "trainer=ddp",
        "paths.log_dir=/checkpoints/vit-run",
        "hydra.run.dir=/checkpoints/vit-run/run",
        "ckpt_path=auto",
        "logger.tracking_uri=${oc.env:MLFLOW_TRACKING_URI}",
        "logger.run_name=vit-run",
        "model=vit",
        "trainer.max_epochs=5",
    ]


def test_single_node_pytorchjob_has_no_workers(capsys, manifest_checks) -> None:
    job = by_kind(render(capsys, "--nodes 1"))["PyTorchJob"]
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert manifest_checks.crd_errors(job) == []


def test_pod_volumes_and_mlflow_secret(capsys) -> None:
    job = by_kind(
        render(capsys, "--mlflow-secret team-mlflow --checkpoint-claim ckpt --shm-size 32Gi")
    )["PyTorchJob"]
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "ckpt"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert volumes["mlflow-credentials"]["secret"]["secretName"] == "team-mlflow"

    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {
        "checkpoints": "/checkpoints",
        "dshm": "/dev/shm",
        "tmp": "/tmp",
        "mlflow-credentials": "/home/curvlab/.mlflow",
    }
    uri = container["env"][0]
    assert uri["name"] == "MLFLOW_TRACKING_URI"
    assert uri["valueFrom"]["secretKeyRef"] == {
        "name": "team-mlflow",
        "key": "MLFLOW_TRACKING_URI",
    }


def test_indexed_job_rendezvous(capsys) -> None:
    docs = render(
        capsys, "--kind indexed-job --nodes 3 --gpus-per-node 4 --name ij --namespace ml"
    )
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Service", "Job"]
    assert all(d["metadata"]["namespace"] == "ml" for d in docs)
    service, job = by_kind(docs)["Service"], by_kind(docs)["Job"]

    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "ij"

    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["PET_NNODES"]["value"] == "3"
    assert env["PET_NPROC_PER_NODE"]["value"] == "4"
    assert env["PET_MASTER_ADDR"]["value"] == "ij-0.ij"
    assert env["PET_MASTER_PORT"]["value"] == "29500"
    index = env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_trainjob_variant(capsys, manifest_checks) -> None:
    docs = render(capsys, "--kind trainjob --nodes 2 --gpus-per-node 8 model=vit")
    job = by_kind(docs)["TrainJob"]
    assert manifest_checks.crd_errors(job) == []

    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["command"] == ["torchrun"]
    assert trainer["args"][:3] == ["--no-python", "curvlab-train", "trainer=ddp"]
    assert trainer["args"][-1] == "model=vit"

    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    pod = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert patch["replicatedJobs"][0]["name"] == "node"
    assert pod["serviceAccountName"] == "curvlab-trainer"
    assert pod["containers"][0]["name"] == "node"


def test_cpu_only_job(capsys) -> None:
    job = by_kind(render(capsys, "--gpus-per-node 0 --nodes 2"))["PyTorchJob"]
    container = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert job["spec"]["nprocPerNode"] == "1"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "trainer.accelerator=cpu" in container["args"]


def test_user_override_replaces_the_jobs_own() -> None:
    spec = LaunchSpec(name="j", overrides=("ckpt_path=/checkpoints/j/best.ckpt", "+seed=3"))
    overrides = hydra_overrides(spec)
    assert "ckpt_path=auto" not in overrides
    assert overrides.count("ckpt_path=/checkpoints/j/best.ckpt") == 1
    assert overrides[-2:] == ["ckpt_path=/checkpoints/j/best.ckpt", "+seed=3"]


def test_overrides_compose_with_the_hydra_config(monkeypatch) -> None:
    # The rendered overrides must be valid for curvlab-train's own config tree.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    overrides = hydra_overrides(LaunchSpec(name="demo", overrides=("trainer.max_epochs=5",)))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)

    assert cfg.trainer.strategy._target_ == "pytorch_lightning.strategies.DDPStrategy"
    assert cfg.trainer.max_epochs == 5
    assert cfg.paths.log_dir == "/checkpoints/demo"
    assert cfg.hydra.run.dir == "/checkpoints/demo/run"
    assert cfg.ckpt_path == "auto"
    assert cfg.logger.tracking_uri == "http://mlflow:5000"
    assert cfg.logger.run_name == "demo"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "Bad_Name"], "DNS label"),
        (["--kind", "mpijob"], "invalid choice"),
        (["--nodes", "0"], "at least 1"),
    ],
)
def test_bad_arguments_exit_with_usage(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def _fake_kubectl(bin_dir: Path, exit_code: int) -> Path:
    # Records its arguments and the manifest it was given.
    script = bin_dir / "kubectl"
    script.write_text(
        f'#!/bin/sh\necho "$@" > "{bin_dir}/args"\ncat > "{bin_dir}/stdin"\nexit {exit_code}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_apply_pipes_the_manifest_to_kubectl(tmp_path, monkeypatch, capsys) -> None:
    _fake_kubectl(tmp_path, exit_code=0)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")

    assert main(["--nodes", "2", "--kind", "indexed-job", "--apply"]) == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "args").read_text().split() == ["apply", "-f", "-"]
    applied = [d for d in yaml.safe_load_all((tmp_path / "stdin").read_text()) if d]
    assert [d["kind"] for d in applied] == ["ServiceAccount", "Service", "Job"]


def test_apply_returns_kubectls_failure(tmp_path, monkeypatch) -> None:
    _fake_kubectl(tmp_path, exit_code=3)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")
    assert main(["--apply"]) == 3


def test_apply_without_kubectl_explains(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["--apply"]) == 127
    err = capsys.readouterr().err
    assert "kubectl" in err and "not found" in err
