"""Two simulated pods train one job: the container entrypoint, the operator's env, real servers.

Each "pod" is a network namespace with a PID namespace of its own (see pods.py), started with
only the environment a PyTorchJob pod's ``pytorch`` container gets, running the image's
entrypoint ``torchrun --no-python curvlab-train <overrides>`` with the overrides that
``curvlab-launch`` renders (the checkpoint volume at a temporary directory instead of
/checkpoints). Two processes per pod make four gloo ranks. They log to an MLflow server with basic
auth and a PostgreSQL backend on the host's loopback, with the credentials file the manifests
mount. Root only; skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import logging
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pods
import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from curvlab.launch.manifests import CHECKPOINT_DIR, LaunchSpec, hydra_overrides

log = logging.getLogger(__name__)


def _load_servers() -> ModuleType:
    # tests/ is not a package, so load the tracking tests' server helpers by path.
    path = Path(__file__).resolve().parents[1] / "tracking" / "servers.py"
    spec = importlib.util.spec_from_file_location("curvlab_test_servers", path)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


servers = _load_servers()

_MISSING = pods.netns_missing() or servers.postgres_missing() or servers.basic_auth_missing()
pytestmark = [
    pytest.mark.skipif(_MISSING is not None, reason=f"simulated pods: {_MISSING}"),
    pytest.mark.slow,
    pytest.mark.ddp,
]

NODES, PROCS_PER_NODE = 2, 2
# 1,257 training digits in global batches of 64 (16 per rank): 20 optimizer steps per epoch.
STEPS_PER_EPOCH = 20
JOB_TIMEOUT_S = 420  # a 4-rank job on two shared cores: ~35 s of start-up, ~8 s per epoch
CRASH_FAIL_BOUND_S = 60  # measured: about 6 s from the kill to the surviving pod's exit
DDP_TIMEOUT_S = 30  # trainer.strategy.timeout for the partition test


@dataclass
class Cluster:
    """Two pods, the tracking server they reach at ``server.uri``, and a scratch root."""

    pods: list[pods.Pod]
    server: servers.MlflowServer
    root: Path

    def client(self) -> MlflowClient:
        """A client of the server; the ``admin_env`` fixture supplies its login."""
        return MlflowClient(tracking_uri=self.server.uri)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """PostgreSQL, an MLflow server with basic auth, two pods and the relays between them."""
    root = tmp_path_factory.mktemp("pods")
    password = secrets.token_urlsafe(18)
    with (
        servers.postgres() as backend,
        servers.mlflow_server(backend, root, admin_password=password) as server,
        pods.pod_pair() as pair,
    ):
        port = int(server.uri.rsplit(":", 1)[1])
        with pods.loopback_service(port, pair, root):
            yield Cluster(pods=pair, server=server, root=root)


@pytest.fixture
def admin_env(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process reads the server back as its admin."""
    user, password = cluster.server.admin
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


class Job:
    """One training job across both pods: its volume, overrides and pod processes."""

    def __init__(self, cluster: Cluster, name: str, overrides: list[str]) -> None:
        self.cluster = cluster
        self.name = name
        self.dir = cluster.root / name
        self.volume = self.dir / "volume"  # the ReadWriteMany claim mounted at /checkpoints
        self.weights = self.dir / "weights"
        self.volume.mkdir(parents=True)
        extra = (
            "trainer.enable_progress_bar=false",
            "+callbacks.rank_weights._target_=rank_weights.SaveRankWeights",
            f"+callbacks.rank_weights.out_dir={self.weights}",
            *overrides,
        )
        spec = LaunchSpec(name=name, nodes=NODES, gpus_per_node=0, overrides=extra)
        self.args = [
            "--no-python",
            "curvlab-train",
            *(o.replace(CHECKPOINT_DIR, str(self.volume)) for o in hydra_overrides(spec)),
        ]
        self.procs: list[subprocess.Popen] = []

    @property
    def log_dir(self) -> Path:
        """``paths.log_dir`` as the job sees it: /checkpoints/<name> on the volume."""
        return self.volume / self.name

    def _env(self, pod: pods.Pod) -> dict[str, str]:
        # The Secret's credentials file, mounted at ~/.mlflow/credentials in every pod.
        home = self.dir / f"home{pod.index}"
        (home / ".mlflow").mkdir(parents=True, exist_ok=True)
        user, password = self.cluster.server.admin
        (home / ".mlflow" / "credentials").write_text(
            f"[mlflow]\nmlflow_tracking_username = {user}\nmlflow_tracking_password = {password}\n"
        )
        secret = {"MLFLOW_TRACKING_URI": self.cluster.server.uri}
        # Only for the test's weight-dump callback.
        secret["PYTHONPATH"] = str(pods.HERE)
        operator = pods.operator_env(pod, self.cluster.pods[0], NODES, PROCS_PER_NODE)
        return pods.container_env(home, {**operator, **secret})

    def start(self) -> None:
        """Start the entrypoint in both pods."""
        self.procs = [
            pods.start_pod(pod, self._env(pod), self.args, self.dir) for pod in self.cluster.pods
        ]

    def pod_log(self, index: int) -> str:
        """Everything pod ``index`` printed, across launches."""
        return (self.dir / f"pod{index}.log").read_text(errors="replace")

    def logs(self) -> str:
        """The end of both pods' output, for failure messages."""
        return "\n".join(f"--- pod{n} ---\n{self.pod_log(n)[-6000:]}" for n in range(NODES))

    def wait(self, timeout_s: float = JOB_TIMEOUT_S) -> list[int | None]:
        """Exit codes of both pods, None for a pod still running after ``timeout_s``."""
        return pods.wait_pods(self.procs, timeout_s)

    def stop(self) -> None:
        """Kill whatever is left of the job."""
        for proc in self.procs:
            pods.kill_pod(proc)

    def wait_for_checkpoint(self, timeout_s: float = JOB_TIMEOUT_S) -> Path:
        """The first ``last.ckpt`` on the volume, once rank zero has written it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = list(self.log_dir.rglob("last.ckpt"))
            if found:
                return found[0]
            assert all(p.poll() is None for p in self.procs), self.logs()
            time.sleep(0.2)
        raise AssertionError(f"no last.ckpt after {timeout_s} s\n{self.logs()}")

    def only_run(self) -> Run:
        """The job's one MLflow run (runs are named after the job)."""
        client = self.cluster.client()
        experiment = client.get_experiment_by_name("curvlab")
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"attributes.run_name = '{self.name}'"
        )
        assert len(runs) == 1, [r.info.run_id for r in runs]
        return runs[0]

    def assert_equal_rank_weights(self, checkpoint: Path) -> None:
        """All four ranks end with the same weights, and they are the checkpoint's."""
        ranks = [torch.load(self.weights / f"rank{r}.pt") for r in range(NODES * PROCS_PER_NODE)]
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        saved = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        assert sorted(ranks[0]) == sorted(saved)
        for rank, weights in enumerate(ranks):
            for key, value in weights.items():
                assert torch.equal(value, saved[key]), (rank, key)


def _load(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)


def test_two_pods_train_one_run_with_equal_weights(cluster: Cluster, admin_env: None) -> None:
    job = Job(cluster, "two-pods", ["trainer.max_epochs=2"])
    started = time.monotonic()
    job.start()
    try:
        codes = job.wait()
    finally:
        job.stop()
    log.info("two pods, 2 epochs: %.0f s", time.monotonic() - started)
    assert codes == [0, 0], job.logs()

    # torchrun turned the operator's node-level variables into four process ranks.
    assert "GLOBAL_RANK: 1, MEMBER: 2/4" in job.pod_log(0)
    assert "GLOBAL_RANK: 3, MEMBER: 4/4" in job.pod_log(1)

    # One Hydra directory for all ranks: the fixed run dir, no per-rank timestamped ones.
    assert sorted(p.name for p in job.log_dir.iterdir()) == ["run"]
    assert (job.log_dir / "run" / ".hydra" / "config.yaml").is_file()
    checkpoint = job.log_dir / "run" / "checkpoints" / "last.ckpt"

    # One run, named after the job, holding every step; the topology came from torchrun.
    run = job.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.devices"] == "2"
    assert run.data.params["trainer.num_nodes"] == "2"
    history = cluster.client().get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [9, 19, 29, 39]
    assert len(cluster.client().get_metric_history(run.info.run_id, "val/loss")) == 2
    assert _load(checkpoint)["curvlab"]["mlflow_run_id"] == run.info.run_id

    job.assert_equal_rank_weights(checkpoint)


def test_killed_pod_fails_the_job_fast_and_relaunch_resumes_the_run(
    cluster: Cluster, admin_env: None
) -> None:
    # Enough epochs that the kill lands mid-run: an epoch of this job takes well under a
    # second once it runs, and 4 epochs were once all done 2 s after the first checkpoint.
    max_epochs = 12
    job = Job(cluster, "killed-pod", [f"trainer.max_epochs={max_epochs}"])
    job.start()
    try:
        job.wait_for_checkpoint()
        time.sleep(0.5)  # into the next epoch, so that work after the checkpoint is lost

        # Deleting a pod kills all its processes; the kernel resets their connections.
        pods.kill_pod(job.procs[1])
        killed = time.monotonic()
        survivor = pods.wait_pods(job.procs[:1], CRASH_FAIL_BOUND_S)
        failed_after = time.monotonic() - killed
    finally:
        job.stop()
    log.info("pod 1 killed: pod 0 exited %s after %.1f s", survivor, failed_after)
    assert survivor[0] not in (None, 0), job.logs()

    checkpoint = job.log_dir / "run" / "checkpoints" / "last.ckpt"
    saved = _load(checkpoint)
    run_id = saved["curvlab"]["mlflow_run_id"]
    assert saved["epoch"] < max_epochs - 1, "the job finished before the pod was killed"

    # The operator restarts the pods with the same arguments: same volume, same run.
    job.start()
    try:
        codes = job.wait()
    finally:
        job.stop()
    assert codes == [0, 0], job.logs()
    assert f"Restoring states from the checkpoint path at {checkpoint}" in job.pod_log(0)

    final = _load(checkpoint)
    assert final["epoch"] == max_epochs - 1
    assert final["global_step"] == max_epochs * STEPS_PER_EPOCH
    assert final["curvlab"]["mlflow_run_id"] == run_id
    assert sorted(p.name for p in job.log_dir.iterdir()) == ["run"]

    run = job.only_run()
    assert run.info.run_id == run_id
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in cluster.client().list_artifacts(run_id, "config")}
    assert {"config/config.yaml", "config/config_resume.yaml"} <= artifacts

    # Steps of the epoch cut short are logged again after the resume; every epoch is there.
    history = cluster.client().get_metric_history(run_id, "train/loss")
    assert {m.step for m in history} == set(range(9, max_epochs * STEPS_PER_EPOCH, 10))
    val_steps = {m.step for m in cluster.client().get_metric_history(run_id, "val/loss")}
    assert len(val_steps) == max_epochs

    job.assert_equal_rank_weights(checkpoint)


def test_partitioned_pod_fails_the_job_after_the_ddp_timeout(
    cluster: Cluster, admin_env: None
) -> None:
    job = Job(
        cluster,
        "partitioned-pod",
        ["trainer.max_epochs=40", f"trainer.strategy.timeout.seconds={DDP_TIMEOUT_S}"],
    )
    job.start()
    try:
        job.wait_for_checkpoint()

        # A node that drops off the network sends no reset: only the DDP timeout ends the wait.
        pods.set_link(cluster.pods[1], up=False)
        pods.kill_pod(job.procs[1])
        lost = time.monotonic()
        survivor = pods.wait_pods(job.procs[:1], DDP_TIMEOUT_S + 60)
        failed_after = time.monotonic() - lost
    finally:
        job.stop()
        pods.set_link(cluster.pods[1], up=True)
    log.info("pod 1 partitioned: pod 0 exited %s after %.1f s", survivor, failed_after)

    assert survivor[0] not in (None, 0), job.logs()
    # A collective pod 0 was already in when the link went down may time out a little earlier.
    assert DDP_TIMEOUT_S - 5 <= failed_after < DDP_TIMEOUT_S + 60
    assert "timeout" in job.pod_log(0).lower()
