"""``curvlab-launch``: render (or apply) a multi-node training job for Kubernetes.

Example::

    curvlab-launch --nodes 2 --gpus-per-node 8 --image registry/curvlab:0.1.0 \\
        model=vit trainer.max_epochs=50 > job.yaml

Every argument that is not an option is a Hydra override, passed unchanged to ``curvlab-train``
in each pod after the job's own (see :func:`curvlab.launch.manifests.hydra_overrides`).
"""

import argparse
import logging
import re
import shutil
import subprocess
import sys

from curvlab.launch.manifests import KINDS, LaunchSpec, render, to_yaml

log = logging.getLogger(__name__)

# A DNS label short enough that "<name>-<index>" pod hostnames stay within 63 characters.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``curvlab-launch``."""
    defaults = LaunchSpec()
    parser = argparse.ArgumentParser(
        prog="curvlab-launch",
        description="Render a multi-node curvlab training job for Kubernetes. Arguments that "
        "are not options are Hydra overrides for curvlab-train.",
    )
    parser.add_argument("--nodes", type=_positive, default=1, help="pods, one per node")
    parser.add_argument(
        "--gpus-per-node",
        type=_non_negative,
        default=defaults.gpus_per_node,
        help="GPUs and torchrun processes per pod; 0 trains on CPU with one process",
    )
    parser.add_argument("--image", default=defaults.image, help="training image, tag or digest")
    parser.add_argument(
        "--kind", choices=KINDS, default="pytorchjob", help="job resource to render"
    )
    parser.add_argument("--name", default=defaults.name, help="job name, also the MLflow run")
    parser.add_argument("--namespace", default=None, help="namespace for the objects")
    parser.add_argument(
        "--checkpoint-claim",
        default=defaults.checkpoint_claim,
        help="PersistentVolumeClaim mounted at /checkpoints (ReadWriteMany for several nodes)",
    )
    parser.add_argument(
        "--mlflow-secret",
        default=defaults.mlflow_secret,
        help="Secret with MLFLOW_TRACKING_URI and an MLflow credentials file",
    )
    parser.add_argument("--cpu", default=defaults.cpu, help="CPU request and limit per pod")
    parser.add_argument("--memory", default=defaults.memory, help="memory per pod")
    parser.add_argument("--shm-size", default=defaults.shm_size, help="size of /dev/shm")
    parser.add_argument(
        "--apply", action="store_true", help="pipe the manifests to `kubectl apply -f -`"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=vit")
    return parser


def _apply(text: str) -> int:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        sys.stderr.write(
            "curvlab-launch: --apply needs kubectl on PATH, and it was not found. Install "
            "kubectl and point it at your cluster, or drop --apply and pipe the output to "
            "`kubectl apply -f -` yourself.\n"
        )
        return 127
    return subprocess.run([kubectl, "apply", "-f", "-"], input=text, text=True).returncode


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, render the job and print it or apply it.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        The process exit status: 0 on success, kubectl's status with ``--apply``.
    """
    parser = build_parser()
    # Intermixed parsing lets options follow the Hydra overrides, as they do for curvlab-train.
    args = parser.parse_intermixed_args(argv)

    if not _NAME.match(args.name):
        parser.error(
            f"--name {args.name!r} must be a lower-case DNS label of at most 52 characters "
            "(letters, digits and '-', starting and ending with a letter or digit)"
        )

    spec = LaunchSpec(
        name=args.name,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        image=args.image,
        namespace=args.namespace,
        checkpoint_claim=args.checkpoint_claim,
        mlflow_secret=args.mlflow_secret,
        cpu=args.cpu,
        memory=args.memory,
        shm_size=args.shm_size,
        overrides=tuple(args.overrides),
    )
    text = to_yaml(render(spec, args.kind))

    if args.apply:
        return _apply(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
