"""The PyTorchJob and TrainJob manifests against the operators' CRD schemas (closed to typos)."""

import copy

import pytest
from manifest_checks import K8S, OVERLAYS, crd_errors, kustomize


def _custom_resources() -> list[tuple[str, dict]]:
    found = []
    for overlay in OVERLAYS:
        for doc in kustomize(str(K8S / "overlays" / overlay)):
            if doc["kind"] in ("PyTorchJob", "TrainJob"):
                found.append((f"{overlay}:{doc['kind']}", doc))
    return found


def test_overlays_hold_one_of_each_custom_kind() -> None:
    kinds = sorted(label for label, _ in _custom_resources())
    assert kinds == ["pytorchjob:PyTorchJob", "trainjob:TrainJob"]


@pytest.mark.parametrize("label", ["pytorchjob:PyTorchJob", "trainjob:TrainJob"])
def test_custom_resources_match_their_crd(label: str) -> None:
    manifest = dict(_custom_resources())[label]
    assert crd_errors(manifest) == []


def _pytorchjob() -> dict:
    return copy.deepcopy(dict(_custom_resources())["pytorchjob:PyTorchJob"])


def test_schema_rejects_a_wrong_type() -> None:
    job = _pytorchjob()
    job["spec"]["nprocPerNode"] = 8  # the CRD wants a string
    assert any("nprocPerNode" in error and "string" in error for error in crd_errors(job))


def test_schema_rejects_a_misspelt_field() -> None:
    job = _pytorchjob()
    job["spec"]["runPolicy"]["backofLimit"] = job["spec"]["runPolicy"].pop("backoffLimit")
    assert any("backofLimit" in error for error in crd_errors(job))


def test_schema_rejects_a_missing_required_field() -> None:
    trainjob = copy.deepcopy(dict(_custom_resources())["trainjob:TrainJob"])
    del trainjob["spec"]["runtimeRef"]
    assert any("runtimeRef" in error for error in crd_errors(trainjob))
