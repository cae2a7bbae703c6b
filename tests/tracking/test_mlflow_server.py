"""An MLflow server with basic auth on loopback: anonymous requests are refused, and curvlab
logs through it with the credentials MLflow's client reads from the environment.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
import servers
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

_MISSING = servers.basic_auth_missing()
pytestmark = [
    pytest.mark.skipif(_MISSING is not None, reason=f"basic-auth server: {_MISSING}"),
    # About 20 s to start the server, and curvlab runs through it.
    pytest.mark.slow,
]

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=10"
# One quick epoch of the default MLP.
QUICK = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.MlflowServer]:
    """A basic-auth MLflow server on loopback, SQLite store, ``admin`` with a random password."""
    root = tmp_path_factory.mktemp("auth-server")
    password = secrets.token_urlsafe(18)
    with servers.mlflow_server(
        f"sqlite:///{root / 'mlflow.db'}", root, admin_password=password
    ) as running:
        yield running


def _get(url: str, credentials: tuple[str, str] | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_requests_without_valid_credentials_are_refused(server: servers.MlflowServer) -> None:
    status, headers, _ = _get(server.uri + SEARCH)
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Basic")

    user, password = server.admin
    assert _get(server.uri + SEARCH, (user, password + "x"))[0] == 401
    assert _get(server.uri + SEARCH, ("nobody", password))[0] == 401

    status, _, body = _get(server.uri + SEARCH, server.admin)
    assert status == 200
    assert "Default" in {e["name"] for e in json.loads(body)["experiments"]}

    # The health check stays open: curvlab probes it before training, without credentials.
    assert _get(server.uri + "/health")[0] == 200


def test_the_python_client_without_credentials_is_refused(
    server: servers.MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(MlflowException, match=r"401|[Uu]nauthori[sz]ed|credentials"):
        MlflowClient(tracking_uri=server.uri).search_experiments()


def _train(cwd: Path, run_name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Tracking settings come only from ``env``, never from the environment pytest runs in.
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "curvlab.cli.train", *QUICK, f"logger.run_name={run_name}"],
        cwd=cwd,
        env={**base, **env, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _admin_client(server: servers.MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    user, password = server.admin
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return MlflowClient(tracking_uri=server.uri)


def _runs_named(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name("curvlab")
    if experiment is None:
        return []
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'"
    )


def test_curvlab_logs_with_credentials_from_the_environment(
    server: servers.MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, password = server.admin
    env = {
        "MLFLOW_TRACKING_URI": server.uri,
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password,
    }
    proc = _train(tmp_path, "with-credentials", env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    client = _admin_client(server, monkeypatch)
    (run,) = _runs_named(client, "with-credentials")
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_epochs"] == "1"
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 1

    # Artifacts go through the server too, under the same login.
    config = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert "config/config.yaml" in config
    (checkpoint,) = client.list_artifacts(run.info.run_id, "checkpoints")
    assert checkpoint.path.endswith(".ckpt") and checkpoint.file_size > 0

    # Nothing was written to a local store instead.
    assert not (tmp_path / "mlflow.db").exists()


def test_curvlab_without_credentials_fails_and_creates_no_run(
    server: servers.MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = _train(tmp_path, "without-credentials", {"MLFLOW_TRACKING_URI": server.uri})
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "401" in output or "nauthori" in output, output[-3000:]

    client = _admin_client(server, monkeypatch)
    assert _runs_named(client, "without-credentials") == []
    assert not (tmp_path / "mlflow.db").exists()
