"""yamllint, kubernetes-validate, hadolint and checkov over k8s/ and docker/, all offline."""

import json
import shutil

import pytest
from manifest_checks import (
    CUSTOM_KINDS,
    DOCKER,
    K8S,
    OVERLAYS,
    REPO,
    find_tool,
    kustomize,
    run_tool,
)
from yaml import safe_dump, safe_dump_all

DOCKERFILES = (DOCKER / "Dockerfile", DOCKER / "mlflow.Dockerfile")

# The only checkov checks skipped anywhere; each skip carries its reason in the annotation.
ALLOWED_SKIPS = {"CKV_K8S_35", "CKV_K8S_43"}


def test_yamllint_strict() -> None:
    yamllint = find_tool("yamllint")
    config = str(K8S / ".yamllint.yaml")
    result = run_tool([yamllint, "--strict", "-c", config, str(K8S), str(DOCKER / "compose.yaml")])
    assert result.returncode == 0, result.stdout
    assert result.stdout == ""


def test_yamllint_catches_a_bad_file(tmp_path) -> None:
    # Control: the configuration does flag a duplicated key and an over-long line.
    yamllint = find_tool("yamllint")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb: " + "x" * 120 + "\n")
    result = run_tool([yamllint, "-c", str(K8S / ".yamllint.yaml"), str(bad)])
    assert result.returncode == 1
    assert "key-duplicates" in result.stdout and "line-length" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_resources_validate_strictly(overlay: str, tmp_path) -> None:
    validator = find_tool("kubernetes-validate")
    core = [
        doc
        for doc in kustomize(str(K8S / "overlays" / overlay))
        if doc["kind"] not in CUSTOM_KINDS
    ]
    assert len(core) >= 10

    path = tmp_path / f"{overlay}.yaml"
    path.write_text(safe_dump_all(core))
    result = run_tool([validator, "--strict", "--quiet", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_rejects_unknown_fields(tmp_path) -> None:
    # Control: --strict refuses a misspelt field that plain validation would let through.
    validator = find_tool("kubernetes-validate")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"selectr": {"a": "b"}, "ports": [{"port": 80}]},
    }
    path = tmp_path / "service.yaml"
    path.write_text(safe_dump(service))
    result = run_tool([validator, "--strict", "--quiet", str(path)])
    assert result.returncode != 0
    assert "selectr" in result.stdout + result.stderr


def test_hadolint_passes_both_dockerfiles() -> None:
    hadolint = find_tool("hadolint")
    result = run_tool([hadolint, *map(str, DOCKERFILES)])
    assert result.returncode == 0, result.stdout
    assert result.stdout == ""


def test_hadolint_catches_a_bad_dockerfile(tmp_path) -> None:
    # Control: an untagged base and a cached pip install are flagged.
    hadolint = find_tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask==3.0.0\n")
    result = run_tool([hadolint, str(bad)])
    assert result.returncode == 1
    assert "DL3006" in result.stdout and "DL3042" in result.stdout


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory) -> dict[str, dict]:
    """checkov over the rendered overlays and both Dockerfiles, one run, by framework."""
    checkov = find_tool("checkov")
    scan = tmp_path_factory.mktemp("checkov")
    for overlay in OVERLAYS:
        (scan / f"{overlay}.yaml").write_text(
            safe_dump_all(kustomize(str(K8S / "overlays" / overlay)))
        )
    for dockerfile in DOCKERFILES:
        shutil.copy(dockerfile, scan / dockerfile.name)

    # --skip-download keeps checkov offline; it otherwise fetches guideline links.
    result = run_tool(
        [
            checkov,
            "-d",
            str(scan),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--skip-download",
            "-o",
            "json",
        ],
        cwd=REPO,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return {report["check_type"]: report for report in reports}


@pytest.mark.parametrize("framework", ["kubernetes", "dockerfile"])
def test_checkov_finds_no_failures(checkov_report, framework: str) -> None:
    report = checkov_report[framework]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for c in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100


def test_checkov_skips_are_few_and_justified(checkov_report) -> None:
    skipped = [
        c for report in checkov_report.values() for c in report["results"]["skipped_checks"]
    ]
    assert {c["check_id"] for c in skipped} <= ALLOWED_SKIPS
    # checkov keeps the text after "CHECK_ID=" as the suppression comment.
    assert all(len(c["check_result"].get("suppress_comment", "")) > 20 for c in skipped)


def test_checkov_covers_the_key_pod_checks(checkov_report) -> None:
    passed = {c["check_id"] for c in checkov_report["kubernetes"]["results"]["passed_checks"]}
    # read-only root, no escalation, capabilities, seccomp, token, non-root UID, NetworkPolicy.
    expected = {
        "CKV_K8S_22",
        "CKV_K8S_20",
        "CKV_K8S_37",
        "CKV_K8S_31",
        "CKV_K8S_38",
        "CKV_K8S_40",
        "CKV2_K8S_6",
    }
    assert expected <= passed
    dockerfile = {c["check_id"] for c in checkov_report["dockerfile"]["results"]["passed_checks"]}
    assert {"CKV_DOCKER_2", "CKV_DOCKER_3", "CKV_DOCKER_7", "CKV_DOCKER_8"} <= dockerfile
