"""The launch-environment checks: refuse plain python under an operator, derive the topology."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from curvlab.launch import LaunchEnvironmentError, check_launch_environment, lightning_topology

# What the PyTorchJob operator injects into the second of two pods (8 processes each).
OPERATOR_POD_1 = {
    "MASTER_ADDR": "job-master-0",
    "MASTER_PORT": "23456",
    "WORLD_SIZE": "2",
    "RANK": "1",
    "PET_MASTER_ADDR": "job-master-0",
    "PET_MASTER_PORT": "23456",
    "PET_NNODES": "2",
    "PET_NPROC_PER_NODE": "8",
    "PET_NODE_RANK": "1",
}

# What torchrun adds for local process 3 of that pod, global rank 11.
TORCHRUN_WORKER = {
    **OPERATOR_POD_1,
    "RANK": "11",
    "WORLD_SIZE": "16",
    "LOCAL_RANK": "3",
    "LOCAL_WORLD_SIZE": "8",
    "GROUP_RANK": "1",
    "GROUP_WORLD_SIZE": "2",
    "TORCHELASTIC_RUN_ID": "none",
}


def test_plain_python_under_pytorchjob_operator_is_refused() -> None:
    with pytest.raises(LaunchEnvironmentError) as caught:
        check_launch_environment(OPERATOR_POD_1)

    message = str(caught.value)
    assert "torchrun --no-python curvlab-train" in message
    assert "RANK=1" in message and "WORLD_SIZE=2" in message and "PET_NNODES=2" in message
    assert "\n" not in message  # one paragraph


@pytest.mark.parametrize(
    "environ",
    [
        # Kubeflow Trainer v2 injects only PET_* names.
        {"PET_NNODES": "2", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "job-node-0-0"},
        # A node-level RANK alone is already a process rank Lightning would misread.
        {"RANK": "0", "WORLD_SIZE": "4"},
    ],
    ids=["trainer-v2", "rank-only"],
)
def test_other_operator_signatures_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(LaunchEnvironmentError, match="without torchrun"):
        check_launch_environment(environ)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"HOME": "/home/curvlab"},
        TORCHRUN_WORKER,
        # A child started by Lightning's own DDP launcher on one machine.
        {"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"},
        # Lightning's documented manual multi-node launch: NODE_RANK, no RANK.
        {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "4", "NODE_RANK": "1"},
    ],
    ids=["empty", "unrelated", "torchrun-worker", "lightning-child", "lightning-manual"],
)
def test_accepted_environments(environ: dict[str, str]) -> None:
    assert check_launch_environment(environ) is None


def test_topology_from_torchrun_sizes() -> None:
    assert lightning_topology(TORCHRUN_WORKER) == (8, 2)
    standalone = {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "1"}
    assert lightning_topology(standalone) == (1, 1)


def test_topology_is_none_outside_torchrun() -> None:
    assert lightning_topology({}) is None
    assert lightning_topology(OPERATOR_POD_1) is None
    # Lightning's own children carry LOCAL_RANK but were not started by torchrun.
    assert lightning_topology({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) is None


def test_topology_falls_back_to_pet_values() -> None:
    elastic = {"TORCHELASTIC_RUN_ID": "job", "PET_NPROC_PER_NODE": "4", "PET_NNODES": "1:3"}
    assert lightning_topology(elastic) == (4, 3)

    grouped = {"TORCHELASTIC_RUN_ID": "job", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "5"}
    assert lightning_topology(grouped) == (2, 5)


def test_topology_rejects_uneven_nodes() -> None:
    uneven = {"TORCHELASTIC_RUN_ID": "job", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "10"}
    with pytest.raises(LaunchEnvironmentError, match="same number of processes"):
        lightning_topology(uneven)


# Each worker reports, in a file of its own, what the two functions see in the environment
# torchrun gave it.
_PROBE = textwrap.dedent(
    """
    import json, os, pathlib, sys
    from curvlab.launch import check_launch_environment, lightning_topology
    check_launch_environment()
    rank = int(os.environ["RANK"])
    report = {"rank": rank, "topology": lightning_topology()}
    pathlib.Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(report))
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _operator_env(node_rank: int, port: int) -> dict[str, str]:
    # Two "pods" on loopback, as the operator would describe them, two processes each.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(node_rank),
        PET_MASTER_ADDR="127.0.0.1",
        PET_MASTER_PORT=str(port),
        PET_NNODES="2",
        PET_NPROC_PER_NODE="2",
        PET_NODE_RANK=str(node_rank),
    )
    return env


@pytest.mark.timeout(120)
def test_real_torchrun_with_operator_env(tmp_path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(_PROBE)
    port = _free_port()

    # Plain python in the pod environment stops at once with the explanation.
    plain = subprocess.run(
        [sys.executable, str(probe), str(tmp_path)],
        env=_operator_env(1, port),
        capture_output=True,
        text=True,
    )
    assert plain.returncode != 0
    assert "LaunchEnvironmentError" in plain.stderr and "torchrun" in plain.stderr

    # torchrun in both pods, reading only the PET_* defaults, forms one 4-process job.
    torchrun = [sys.executable, "-m", "torch.distributed.run", str(probe), str(tmp_path)]
    agents = [
        subprocess.Popen(
            torchrun, env=_operator_env(n, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for n in (0, 1)
    ]
    outputs = [agent.communicate(timeout=100) for agent in agents]
    for agent, (_, err) in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, err.decode()

    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]
    assert sorted(r["rank"] for r in reports) == [0, 1, 2, 3]
    assert all(r["topology"] == [2, 2] for r in reports)
