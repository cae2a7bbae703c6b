"""How this process was started: torchrun, plain python, or plain python inside an operator's pod.

The Kubeflow training operator gives every pod node-level variables (``RANK`` is the pod's node
index, ``WORLD_SIZE`` the node count) and torchrun's ``PET_*`` defaults. torchrun turns them into
per-process ranks; plain ``python`` does not, and Lightning then reads the node-level values as
process ranks, so two pods both claim ranks 0 and 1 and wait for each other forever. The entry
point calls :func:`check_launch_environment` first to fail fast instead, then
:func:`lightning_topology` to derive ``trainer.devices`` and ``trainer.num_nodes`` from torchrun.
"""

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

# Variables that only a torchrun worker (or a Lightning-launched child process) carries.
TORCHRUN_MARKERS = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")

# Node-level variables the PyTorchJob operator injects into every pod.
OPERATOR_NODE_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LaunchEnvironmentError(RuntimeError):
    """The process was started in a way that would hang or mis-assign ranks."""


def _pet_vars(environ: Mapping[str, str]) -> list[str]:
    return sorted(name for name in environ if name.startswith("PET_"))


def check_launch_environment(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse to start as plain ``python`` inside a distributed training pod.

    A process counts as started by torchrun (or by Lightning's own launcher) when any of
    :data:`TORCHRUN_MARKERS` is set; such a process always passes. Otherwise the process refuses
    when the operator's ``PET_*`` variables are set, or when ``RANK`` is set: both are what the
    Kubeflow operators inject, and ``RANK`` there is a node index, not a process rank.
    ``MASTER_ADDR`` / ``WORLD_SIZE`` with ``NODE_RANK`` and no ``RANK`` is Lightning's documented
    manual multi-node launch and is left alone.

    Args:
        environ: The process environment to inspect.

    Raises:
        LaunchEnvironmentError: With one paragraph saying what was found and how to start instead.
    """
    if any(name in environ for name in TORCHRUN_MARKERS):
        return

    pet = _pet_vars(environ)
    if not pet and "RANK" not in environ:
        return

    found = [name for name in OPERATOR_NODE_VARS if name in environ] + pet
    shown = ", ".join(f"{name}={environ[name]}" for name in found)
    raise LaunchEnvironmentError(
        "curvlab was started as plain python inside a distributed training pod "
        f"({shown}), but without torchrun. These variables describe nodes, not processes: "
        "without torchrun every pod would claim the same global ranks and the job would hang "
        "at the first collective. Start it through torchrun, which reads the PET_* variables "
        "as defaults for its own flags, e.g. `torchrun --no-python curvlab-train <overrides>` "
        "(the curvlab image's entrypoint does this), or use manifests rendered by "
        "`curvlab-launch`. To train in a single process here, unset RANK and the PET_* variables."
    )


def _positive_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "")
    if not value.isdigit() or int(value) < 1:
        return None
    return int(value)


def lightning_topology(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """Derive the Lightning Trainer's ``devices`` and ``num_nodes`` from torchrun's environment.

    torchrun sets ``LOCAL_WORLD_SIZE`` (processes on this node) and ``WORLD_SIZE`` (processes in
    the job) in every worker after rendezvous; Lightning requires ``devices * num_nodes`` to
    equal ``WORLD_SIZE``. When those are missing, the operator's ``PET_NPROC_PER_NODE`` and
    ``PET_NNODES`` are used (a ``min:max`` elastic range uses its maximum).

    Args:
        environ: The process environment to inspect.

    Returns:
        ``(devices, num_nodes)`` under torchrun, or None when not started by torchrun (then the
        Trainer settings from the config apply unchanged).

    Raises:
        LaunchEnvironmentError: When torchrun's sizes are inconsistent (``WORLD_SIZE`` is not a
            multiple of ``LOCAL_WORLD_SIZE``), which Lightning would reject later and less clearly.
    """
    # Lightning's own TorchElasticEnvironment uses the same marker to detect torchrun.
    if "TORCHELASTIC_RUN_ID" not in environ:
        return None

    devices = _positive_int(environ, "LOCAL_WORLD_SIZE")
    if devices is None:
        devices = _positive_int(environ, "PET_NPROC_PER_NODE") or 1

    world_size = _positive_int(environ, "WORLD_SIZE")
    if world_size is not None:
        if world_size % devices:
            raise LaunchEnvironmentError(
                f"torchrun reports WORLD_SIZE={world_size} processes but LOCAL_WORLD_SIZE="
                f"{devices} per node; Lightning needs the same number of processes on every node."
            )
        return devices, world_size // devices

    # Without WORLD_SIZE, fall back to the node count torchrun was asked for.
    nnodes = environ.get("GROUP_WORLD_SIZE") or environ.get("PET_NNODES") or "1"
    num_nodes = int(nnodes.split(":")[-1]) if nnodes.split(":")[-1].isdigit() else 1
    log.debug("torchrun without WORLD_SIZE: devices=%d num_nodes=%d", devices, num_nodes)
    return devices, max(num_nodes, 1)
