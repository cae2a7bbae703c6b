"""Fixtures for the launch tests; the CRD helpers are shared with tests/k8s."""

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def _load_manifest_checks() -> ModuleType:
    # tests/ is not a package, so load the sibling helper module by path.
    path = Path(__file__).resolve().parents[1] / "k8s" / "manifest_checks.py"
    spec = importlib.util.spec_from_file_location("curvlab_test_manifest_checks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def manifest_checks() -> ModuleType:
    """tests/k8s/manifest_checks.py: CRD validation and tool lookup."""
    return _load_manifest_checks()
