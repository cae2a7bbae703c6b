"""docker/: the images' settings, the pinned requirements and the compose stack."""

import importlib.metadata as metadata
import importlib.util
import re

import yaml
from manifest_checks import DOCKER, REPO, find_tool, run_tool
from packaging.requirements import Requirement

from curvlab.launch.manifests import HOME_DIR
from curvlab.launch.security import RUN_AS_USER


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    # Join continuation lines, drop comments, split into (INSTRUCTION, arguments).
    text = re.sub(r"\\\n\s*", " ", (DOCKER / dockerfile).read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def _last(instructions: list[tuple[str, str]], name: str) -> str:
    return [args for instruction, args in instructions if instruction == name][-1]


def _pins(name: str) -> dict[str, str]:
    lines = (DOCKER / name).read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(pin) == 2 for pin in pins), "every line must be name==version"
    return dict(pins)


def test_training_image_settings() -> None:
    steps = _instructions("Dockerfile")
    assert _last(steps, "USER") == f"{RUN_AS_USER}:{RUN_AS_USER}"
    assert _last(steps, "ENTRYPOINT") == '["torchrun"]'
    assert [args for name, args in steps if name == "FROM"] == [
        "${BASE_IMAGE}:${BASE_TAG} AS build",
        "${BASE_IMAGE}:${BASE_TAG} AS runtime",
    ]
    env = _last(steps, "ENV")
    assert "PYTHONUNBUFFERED=1" in env and f"HOME={HOME_DIR}" in env

    # The base image's torch is the one the requirements pin.
    base_tag = next(args for name, args in steps if args.startswith("BASE_TAG="))
    assert base_tag.removeprefix("BASE_TAG=").startswith(_pins("requirements.txt")["torch"] + "-")


def test_mlflow_image_settings() -> None:
    steps = _instructions("mlflow.Dockerfile")
    assert _last(steps, "USER") == f"{RUN_AS_USER}:{RUN_AS_USER}"
    assert _last(steps, "ENTRYPOINT") == '["mlflow"]'
    assert "/health" in _last(steps, "HEALTHCHECK")
    assert "PYTHONUNBUFFERED=1" in _last(steps, "ENV")


def test_requirements_pin_every_runtime_dependency() -> None:
    pins = _pins("requirements.txt")
    for line in metadata.requires("curvlab"):
        requirement = Requirement(line)
        if requirement.marker and "extra" in str(requirement.marker):
            continue
        assert requirement.name in pins, requirement.name
        assert requirement.specifier.contains(pins[requirement.name]), line

    expected = {
        "torch": "2.14.1",
        "torchvision": "0.29.1",
        "pytorch-lightning": "2.6.6",
        "hydra-core": "1.3.8",
        "mlflow": "3.17.2",
        "timm": "1.0.31",
    }
    assert {name: pins[name] for name in expected} == expected


def test_server_requirements_match_the_client() -> None:
    server, client = _pins("requirements-mlflow.txt"), _pins("requirements.txt")
    assert server["mlflow"] == client["mlflow"]
    assert {"boto3", "psycopg2-binary", "flask-wtf"} <= set(server)  # flask-wtf: mlflow[auth]


def test_freeze_requirements_walks_the_installed_closure() -> None:
    spec = importlib.util.spec_from_file_location("freeze", DOCKER / "freeze_requirements.py")
    freeze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(freeze)

    pins = freeze.closure(["pytorch-lightning"])
    assert pins["pytorch-lightning"] == metadata.version("pytorch-lightning")
    assert pins["torch"] == metadata.version("torch")
    assert "lightning-utilities" in pins
    assert "pytest" not in pins  # only reachable through extras nobody asked for


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_services_are_hardened() -> None:
    services = _compose()["services"]
    assert {"postgres", "minio", "minio-bucket", "mlflow-migrate", "mlflow", "trainer"} <= set(
        services
    )
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert ":" in service["image"] and not service["image"].endswith(":latest"), name
        if name != "volumes-init":
            assert service["user"] == f"{RUN_AS_USER}:{RUN_AS_USER}", name


def test_compose_wiring() -> None:
    services = _compose()["services"]
    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    assert "--serve-artifacts" in mlflow["command"]
    allowed = next(a for a in mlflow["command"] if a.startswith("--allowed-hosts="))
    trainer_uri = services["trainer"]["environment"]["MLFLOW_TRACKING_URI"]
    assert trainer_uri.removeprefix("http://") in allowed.split("=", 1)[1].split(",")

    # The bucket the server writes to is the one the setup job creates.
    bucket = next(a for a in mlflow["command"] if a.startswith("--artifacts-destination="))
    assert bucket.endswith("s3://curvlab-mlflow")
    assert services["minio-bucket"]["command"][-1] == "store/curvlab-mlflow"
    assert services["mlflow-migrate"]["command"][:2] == ["db", "upgrade"]


def test_compose_file_validates(tmp_path) -> None:
    compose = find_tool("docker-compose")
    env = tmp_path / ".env"
    env.write_text((DOCKER / ".env.example").read_text())
    result = run_tool(
        [compose, "--env-file", str(env), "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_credentials(tmp_path) -> None:
    compose = find_tool("docker-compose")
    env = tmp_path / ".env"
    env.write_text("")
    result = run_tool(
        [compose, "--env-file", str(env), "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
        cwd=REPO,
    )
    assert result.returncode != 0
    assert "docker/.env" in result.stderr or ".env.example" in result.stderr


def test_only_the_example_env_file_is_committed() -> None:
    assert "change-me" in (DOCKER / ".env.example").read_text()
    assert (DOCKER / ".gitignore").read_text().split()[-1] == ".env"
