"""The production deployment files: docker-compose.yml is accepted by the compose client, has
every service, uses only real CHRONOQ_* settings, and the image's entry point is `chronoq`."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

try:  # PyYAML is not one of the [test] extras; without it the parsing checks are skipped.
    import yaml
except ImportError:  # pragma: no cover
    yaml = None

from common.infra.config import options

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"postgres", "kafka", "migrate", "topics", "api", "scanner", "executor", "results"}
CHRONOQ_SERVICES = {
    "migrate": "migrate",
    "topics": "topics",
    "api": "api",
    "scanner": "scanner",
    "executor": "executor",
    "results": "results",
}

def _yaml():
    if yaml is None:
        pytest.skip("PyYAML is not installed; the compose file is not parsed")
    return yaml


def _compose_bin() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        message = "docker-compose is not on PATH (apt-get install docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a skip there would hide a broken compose file
        pytest.skip(message)
    return path


def _run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRONOQ_", "POSTGRES_", "KAFKA_"))}
    env.pop("COMPOSE_FILE", None)
    env.pop("COMPOSE_PROJECT_NAME", None)
    return subprocess.run(
        [_compose_bin(), "-f", str(COMPOSE), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture(scope="module")
def raw() -> dict:
    return _yaml().safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The file as the compose client understands it (anchors merged, variables filled in)."""
    loader = _yaml()
    result = _run_compose("config")
    assert result.returncode == 0, result.stderr
    return loader.safe_load(result.stdout)


def test_compose_config_is_accepted() -> None:
    result = _run_compose("config", "-q")
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}"
    # Nothing the client would ignore or warn about (e.g. an unsupported key).
    assert "WARNING" not in result.stderr.upper(), result.stderr


def test_services_exist(raw: dict, resolved: dict) -> None:
    assert SERVICES <= set(raw["services"])
    assert SERVICES <= set(resolved["services"])


def test_chronoq_services_run_the_cli(resolved: dict) -> None:
    services = resolved["services"]
    image = services["api"]["image"]
    for name, subcommand in CHRONOQ_SERVICES.items():
        service = services[name]
        assert service["image"] == image, name
        assert service["command"] == [subcommand], name
        env = service["environment"]
        assert env["CHRONOQ_DATABASE_URL"].startswith("postgresql+psycopg2://"), name
        assert "@postgres:5432/" in env["CHRONOQ_DATABASE_URL"], name
        assert env["CHRONOQ_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["CHRONOQ_LOG_LEVEL"] == "INFO", name
        if name not in {"migrate", "topics"}:
            assert service["stop_grace_period"] in {"30s", "60s"}, name


def test_startup_order(resolved: dict) -> None:
    services = resolved["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("api", "scanner", "executor", "results"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["topics"]["condition"] == "service_completed_successfully", name
    for name in ("postgres", "kafka", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["restart"] == "no"
    assert services["topics"]["restart"] == "no"


def test_api_and_executors(resolved: dict) -> None:
    services = resolved["services"]
    api = services["api"]
    assert api["environment"]["CHRONOQ_API_HOST"] == "0.0.0.0"
    assert any(int(p["target"]) == 8080 and int(p["published"]) == 8080 for p in api["ports"])
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    executor = services["executor"]
    assert executor["deploy"]["replicas"] == 3
    assert "container_name" not in executor  # a fixed name would make replicas impossible
    assert executor["stop_grace_period"] == "60s"


def test_kafka_is_kraft_single_node(resolved: dict) -> None:
    kafka = resolved["services"]["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert str(env["KAFKA_NODE_ID"]) == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["CLUSTER_ID"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert str(env[key]) == "1", key


def test_every_chronoq_variable_is_a_setting() -> None:
    known = {name for name, _help, _default in options()}
    used = set(re.findall(r"\bCHRONOQ_[A-Z0-9_]+", COMPOSE.read_text()))
    # ${CHRONOQ_IMAGE} and ${CHRONOQ_API_PUBLISH} are compose-level knobs (image tag, host port),
    # not service settings; they never reach a container's environment.
    compose_only = {"CHRONOQ_IMAGE", "CHRONOQ_API_PUBLISH"}
    assert used, "the compose file sets no CHRONOQ_* variable"
    unknown = used - known - compose_only
    assert not unknown, f"not settings in common/infra/config.py: {sorted(unknown)}"


def test_container_environment_holds_only_settings(raw: dict) -> None:
    known = {name for name, _help, _default in options()}
    for name, service in raw["services"].items():
        env = service.get("environment") or {}
        keys = env if isinstance(env, dict) else [item.split("=", 1)[0] for item in env]
        bad = {key for key in keys if key.startswith("CHRONOQ_") and key not in known}
        assert not bad, f"{name}: {sorted(bad)}"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_entrypoint_is_chronoq() -> None:
    instructions = _dockerfile_instructions()
    entrypoints = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["chronoq"]
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert froms[-1].split()[0] == "python:3.11-slim"
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must not run as root"
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "pip install ." in runs
    assert "[test]" not in runs and "[local]" not in runs


def test_console_script_is_declared() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"]
    assert re.search(r"^\s*chronoq\s*=\s*common\.launch\.cli:main\s*$", scripts, re.M)


def test_migrations_ship_in_the_package() -> None:
    """`chronoq migrate` in the image runs from the installed wheel, not from a checkout: every
    file Alembic needs under common/core/migrations must be matched by setup.cfg's package_data."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = cfg["options.package_data"]["common.core"].replace("\n", ",").split(",")
    patterns = [p.strip() for p in patterns if p.strip()]
    common = ROOT / "common" / "core"
    shipped = {path for pattern in patterns for path in common.glob(pattern)}  # no `**`: like setuptools
    missing = [
        str(path.relative_to(common))
        for path in sorted((common / "migrations").rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}
        and path not in shipped
    ]
    assert not missing, f"not installed by `pip install .` (add to [options.package_data]): {missing}"
