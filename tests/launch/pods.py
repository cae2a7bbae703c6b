"""Two "pods" on one machine: network namespaces joined by a veth pair, a PID namespace each.

Each pod gets a network namespace of its own (``eth0`` at 10.200.0.<n+1>/24 and its own
loopback), is started in a fresh PID namespace so that killing it takes every process inside with
it, as deleting a pod does, and sees only the environment its container would see: what the
PyTorchJob operator injects plus the image's and the Secret's variables. The MLflow server stays
on the host's loopback; relays over a Unix socket (``relay.py``) make it answer on the same
``http://127.0.0.1:<port>`` inside each pod. No address outside these namespaces is used.

Needs root, iproute2 (``ip``) and util-linux (``unshare``). Not a test module: test modules
import it (tests/ is not a package; pytest puts this directory on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
SUBNET = "10.200.0"  # pod n is SUBNET.(n+1)/24; private, and only inside our namespaces
IFNAME = "eth0"  # the pod's interface, named as in a real pod
OPERATOR_PORT = 23456  # the training operator's rendezvous port (PET_MASTER_PORT)
RELAY_READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Pod:
    """One simulated pod: its network namespace and address."""

    index: int
    netns: str
    address: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def netns_missing() -> str | None:
    """Why simulated pods cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


@contextlib.contextmanager
def pod_pair() -> Iterator[list[Pod]]:
    """Two network namespaces joined by a veth pair; both removed on exit.

    Yields:
        Pod 0 (the master, 10.200.0.1) and pod 1 (10.200.0.2).
    """
    # A random suffix keeps concurrent test sessions on one machine apart.
    token = secrets.token_hex(3)
    pods = [Pod(n, f"curvlab-pod{n}-{token}", f"{SUBNET}.{n + 1}") for n in range(2)]
    created: list[str] = []
    try:
        for pod in pods:
            _ip("netns", "add", pod.netns)
            created.append(pod.netns)
            _ip("-n", pod.netns, "link", "set", "lo", "up")

        # Both ends are born inside the namespaces, so the host never holds the link.
        first, second = (pod.netns for pod in pods)
        _ip("link", "add", IFNAME, "netns", first, "type", "veth", "peer", IFNAME, "netns", second)
        for pod in pods:
            _ip("-n", pod.netns, "addr", "add", f"{pod.address}/24", "dev", IFNAME)
            _ip("-n", pod.netns, "link", "set", IFNAME, "up")
        yield pods
    finally:
        # Deleting a namespace also deletes its end of the veth pair.
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def set_link(pod: Pod, up: bool) -> None:
    """Bring a pod's ``eth0`` up or down: down is a network partition, no FIN, no RST."""
    _ip("-n", pod.netns, "link", "set", IFNAME, "up" if up else "down")


def _start_relay(listen: str, target: str, netns: str | None) -> subprocess.Popen:
    command = [sys.executable, str(HERE / "relay.py"), listen, target]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )

    # The relay prints one line once it listens; anything else is an error message.
    ready, _, _ = select.select([proc.stdout], [], [], RELAY_READY_TIMEOUT_S)
    line = proc.stdout.readline().decode() if ready else ""
    if line.strip() != "ready":
        _stop(proc)
        raise RuntimeError(f"relay {listen} -> {target} did not start: {line!r}")
    return proc


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def loopback_service(port: int, pods: list[Pod], socket_dir: Path) -> Iterator[None]:
    """Make the host's ``127.0.0.1:port`` answer on ``127.0.0.1:port`` inside every pod."""
    sock = socket_dir / f"service-{port}.sock"
    relays = []
    try:
        relays.append(_start_relay(f"unix:{sock}", f"tcp:127.0.0.1:{port}", None))
        for pod in pods:
            relays.append(_start_relay(f"tcp:127.0.0.1:{port}", f"unix:{sock}", pod.netns))
        yield
    finally:
        for proc in relays:
            _stop(proc)
        sock.unlink(missing_ok=True)


def operator_env(pod: Pod, master: Pod, nodes: int, procs_per_node: int) -> dict[str, str]:
    """What the PyTorchJob operator injects into a pod's ``pytorch`` container.

    ``RANK`` and ``WORLD_SIZE`` describe nodes, not processes; torchrun reads the ``PET_*``
    names as defaults for its flags and gives every worker its process rank.
    """
    return {
        "MASTER_ADDR": master.address,
        "MASTER_PORT": str(OPERATOR_PORT),
        "WORLD_SIZE": str(nodes),
        "RANK": str(pod.index),
        "PET_MASTER_ADDR": master.address,
        "PET_MASTER_PORT": str(OPERATOR_PORT),
        "PET_NNODES": str(nodes),
        "PET_NPROC_PER_NODE": str(procs_per_node),
        "PET_NODE_RANK": str(pod.index),
    }


def container_env(home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The image's own environment (docker/Dockerfile), with this venv standing in for its own."""
    return {
        "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLCONFIGDIR": str(home / ".matplotlib"),
        # A namespace shares the host's hostname and /etc/hosts, which do not resolve to the pod
        # address as they do in a real pod, so gloo is told its interface instead.
        "GLOO_SOCKET_IFNAME": IFNAME,
        **extra,
    }


def start_pod(
    pod: Pod, env: Mapping[str, str], args: list[str], workdir: Path
) -> subprocess.Popen:
    """Run the container entrypoint, ``torchrun <args>``, inside ``pod``.

    ``unshare --pid --fork --kill-child`` gives the pod a PID namespace: when the returned
    process dies, the kernel kills everything inside, torchrun's workers included (they run in
    sessions of their own, so a process-group signal would miss them).

    Returns:
        The pod's root process; its output goes to ``workdir / "pod<n>.log"``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    command = ["ip", "netns", "exec", pod.netns, "unshare", "--pid", "--fork", "--kill-child"]
    with (workdir / f"pod{pod.index}.log").open("ab") as out:
        return subprocess.Popen(
            [*command, "torchrun", *args],
            cwd=workdir,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_pod(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGKILL a pod's root process, which takes its whole PID namespace down, and reap it."""
    _stop(proc, signal.SIGKILL, timeout_s)


def wait_pods(procs: list[subprocess.Popen], timeout_s: float) -> list[int | None]:
    """Wait up to ``timeout_s`` in all for every pod; exit codes, None for those still running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    return [p.poll() for p in procs]
