"""Launching curvlab on several nodes: torchrun checks, Kubernetes manifests, pod security."""

from curvlab.launch.environment import (
    LaunchEnvironmentError,
    check_launch_environment,
    lightning_topology,
)

__all__ = ["LaunchEnvironmentError", "check_launch_environment", "lightning_topology"]
