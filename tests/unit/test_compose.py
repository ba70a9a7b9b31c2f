"""The production deployment files: docker-compose.yml is accepted by the compose client, has
every service, uses only real CHRONOQ_* settings, has no default secret and runs hardened
containers with a closed API; the image's entry point is `chronoq`, as a non-root user."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

try:  # PyYAML is not one of the [test] extras; without it the parsing checks are skipped.
    import yaml
except ImportError:  # pragma: no cover
    yaml = None

from common.infra.config import load_settings, options
from common.infra.kafka import security_options

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
LONG_RUNNING = {"postgres", "kafka", "api", "scanner", "executor", "results"}
#: What compose must be given (no defaults in the file), and test values for them.
REQUIRED = {
    "POSTGRES_PASSWORD": "test-pg-password",
    "CHRONOQ_SECRET_KEY": "Zm9yLXRlc3RzLW9ubHktMzItYnl0ZXMtbG9uZy1rZXk=",
    "KAFKA_CLUSTER_ID": "MkU3OEVBNTcwNTJENDM2Qk",
}
#: Optional settings compose passes through from the shell (empty: chronoq's default).
PASSED_THROUGH = {
    "all": [
        "CHRONOQ_KAFKA_SECURITY_PROTOCOL", "CHRONOQ_KAFKA_SASL_MECHANISM", "CHRONOQ_KAFKA_SASL_USERNAME",
        "CHRONOQ_KAFKA_SASL_PASSWORD", "CHRONOQ_KAFKA_SSL_CAFILE", "CHRONOQ_KAFKA_SSL_CERTFILE",
        "CHRONOQ_KAFKA_SSL_KEYFILE",
    ],
    "api": [
        "CHRONOQ_JWT_ISSUER", "CHRONOQ_JWT_AUDIENCE", "CHRONOQ_JWT_JWKS_URL", "CHRONOQ_JWT_SECRET",
        "CHRONOQ_JWT_TENANT_CLAIM", "CHRONOQ_JWT_ROLE_CLAIM",
    ],
}
#: The capabilities the postgres image's entrypoint needs to own its data directory and drop
#: to the postgres user; nothing more may be added back.
POSTGRES_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}

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


def _run_compose(*args: str, variables: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f docker-compose.yml ARGS`` with only ``variables`` (default: the
    required ones) from the environment; a developer's shell or `.env` file plays no part."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHRONOQ_", "POSTGRES_", "KAFKA_"))}
    env.pop("COMPOSE_FILE", None)
    env.pop("COMPOSE_PROJECT_NAME", None)
    env.update(REQUIRED if variables is None else variables)
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.env"  # the client refuses /dev/null as an env file
        empty.write_text("")
        return subprocess.run(
            [_compose_bin(), "--env-file", str(empty), "-f", str(COMPOSE), *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )


def _config(**variables: str) -> dict:
    """The resolved file with the required variables and ``variables`` set."""
    result = _run_compose("config", variables={**REQUIRED, **variables})
    assert result.returncode == 0, result.stderr
    return _yaml().safe_load(result.stdout)


def _ports(service: dict) -> list[tuple[str, int, int]]:
    """(host address, published port, container port) of each port; the client prints the
    short form ("127.0.0.1:8080:8080/tcp") or the long one depending on what the file says."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            host = parts[0] if len(parts) == 3 else ""
            out.append((host, int(parts[-2]), int(parts[-1])))
    return out


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


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
    assert (("127.0.0.1", 8080, 8080)) in _ports(api)
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


# -- no default secrets -----------------------------------------------------------------------


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_required_variable_missing_is_refused(missing: str) -> None:
    """No password, key or cluster id falls back to a value everyone can read in this file."""
    result = _run_compose("config", "-q", variables={k: v for k, v in REQUIRED.items() if k != missing})
    assert result.returncode != 0, f"compose accepted the file without {missing}"
    assert missing in result.stderr


def test_no_secret_has_a_default_in_the_file(raw: dict) -> None:
    text = COMPOSE.read_text()
    for name in ("POSTGRES_PASSWORD", "CHRONOQ_SECRET_KEY", "KAFKA_CLUSTER_ID", "CHRONOQ_KAFKA_SASL_PASSWORD",
                 "CHRONOQ_JWT_SECRET"):
        defaults = re.findall(r"\$\{" + name + r":?-([^}]*)\}", text)
        assert all(value == "" for value in defaults), f"{name} has a default: {defaults}"
    assert "4L6g3nShT-eMCtK--X86sw" not in text  # the old built-in cluster id


def test_required_values_reach_the_containers(resolved: dict) -> None:
    services = resolved["services"]
    assert _env(services["postgres"])["POSTGRES_PASSWORD"] == REQUIRED["POSTGRES_PASSWORD"]
    assert _env(services["kafka"])["CLUSTER_ID"] == REQUIRED["KAFKA_CLUSTER_ID"]
    for name in CHRONOQ_SERVICES:
        env = _env(services[name])
        assert f"chronoq:{REQUIRED['POSTGRES_PASSWORD']}@postgres:5432/" in env["CHRONOQ_DATABASE_URL"], name
        assert env["CHRONOQ_SECRET_KEY"] == REQUIRED["CHRONOQ_SECRET_KEY"], name


# -- the API is never open --------------------------------------------------------------------


def test_api_auth_is_on_and_not_a_variable(raw: dict, resolved: dict) -> None:
    # A literal: an unset, empty or mistyped shell variable cannot turn it off.
    assert raw["services"]["api"]["environment"]["CHRONOQ_AUTH"] == "on"
    for name, service in resolved["services"].items():
        value = _env(service).get("CHRONOQ_AUTH")
        assert value in (None, "on"), f"{name}: CHRONOQ_AUTH={value!r}"
    api = load_settings(_env(resolved["services"]["api"]))
    assert api.auth_enabled is True
    assert api.metrics_auth is True


#: The optional observability profile: published, but on loopback only.
OBSERVABILITY = {"prometheus": [("127.0.0.1", 9090, 9090)], "grafana": [("127.0.0.1", 3000, 3000)]}


def test_only_the_api_publishes_a_port_and_on_loopback(resolved: dict) -> None:
    services = resolved["services"]
    for name, service in services.items():
        if name != "api" and name not in OBSERVABILITY:
            assert not service.get("ports"), f"{name} publishes {service['ports']}"
        assert not service.get("network_mode"), name  # host networking would publish everything
    assert _ports(services["api"]) == [("127.0.0.1", 8080, 8080)]
    for name, ports in OBSERVABILITY.items():
        assert _ports(services[name]) == ports, name


def test_observability_profile_scrapes_every_chronoq_service(raw: dict, resolved: dict) -> None:
    """Prometheus and Grafana start only with `--profile observability`, read their files from
    deploy/ (which exist), and Prometheus scrapes each long-running chronoq service on the
    port the containers serve their metrics on."""
    services = resolved["services"]
    for name in OBSERVABILITY:
        assert raw["services"][name]["profiles"] == ["observability"], name
        for volume in raw["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
        assert "no-new-privileges:true" in services[name]["security_opt"], name
    assert _env(services["grafana"])["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    scrape = _yaml().safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"]
    targets = {sd["names"][0]: sd["port"] for job in scrape for sd in job["dns_sd_configs"]}
    for name in ("api", "scanner", "executor", "results"):
        settings = load_settings(_env(services[name]))
        assert targets[name] == settings.health_port, name
        assert settings.health_host == "0.0.0.0", name  # reachable on the compose network


def test_api_publish_address_can_be_chosen() -> None:
    api = _config(CHRONOQ_API_PUBLISH="10.0.0.5:9000")["services"]["api"]
    assert _ports(api) == [("10.0.0.5", 9000, 8080)]


def test_trusted_hosts_default_and_healthcheck_agree(resolved: dict) -> None:
    api = resolved["services"]["api"]
    trusted = load_settings(_env(api)).trusted_hosts
    assert trusted == ("localhost", "127.0.0.1")
    # The healthcheck calls the API by address: a Host header the API must answer.
    host = re.search(r"http://([^:/']+)", " ".join(api["healthcheck"]["test"])).group(1)
    assert host in trusted


def test_trusted_hosts_take_the_public_name() -> None:
    api = _config(CHRONOQ_TRUSTED_HOSTS="chronoq.example.com,127.0.0.1")["services"]["api"]
    assert load_settings(_env(api)).trusted_hosts == ("chronoq.example.com", "127.0.0.1")


# -- optional settings pass through -----------------------------------------------------------


def test_optional_settings_are_passed_through_empty(resolved: dict) -> None:
    services = resolved["services"]
    for name in CHRONOQ_SERVICES:
        env = _env(services[name])
        for variable in PASSED_THROUGH["all"] + (PASSED_THROUGH["api"] if name == "api" else []):
            assert env.get(variable) == "", f"{name}: {variable}"
        # Empty values mean chronoq's defaults: PLAINTEXT to the bundled broker, no JWTs.
        settings = load_settings(env)
        assert security_options(settings) == {}, name
        assert settings.jwt_issuer == "" and settings.jwt_audience == "chronoq", name


def test_managed_kafka_settings_reach_every_chronoq_service() -> None:
    managed = {
        "CHRONOQ_KAFKA_BOOTSTRAP": "broker-1.example.net:9096",
        "CHRONOQ_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CHRONOQ_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CHRONOQ_KAFKA_SASL_USERNAME": "chronoq",
        "CHRONOQ_KAFKA_SASL_PASSWORD": "sasl-pw",
    }
    services = _config(**managed)["services"]
    for name in CHRONOQ_SERVICES:
        settings = load_settings(_env(services[name]))
        assert settings.kafka_bootstrap == "broker-1.example.net:9096", name
        assert security_options(settings) == {
            "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "chronoq", "sasl_plain_password": "sasl-pw",
        }, name


def test_jwt_settings_reach_the_api() -> None:
    api = _config(CHRONOQ_JWT_ISSUER="https://id.example.com/", CHRONOQ_JWT_JWKS_URL="https://id.example.com/jwks")
    settings = load_settings(_env(api["services"]["api"]))
    assert settings.jwt_issuer == "https://id.example.com/"
    assert settings.jwt_jwks_url == "https://id.example.com/jwks"


# -- hardened containers ----------------------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck(resolved: dict) -> None:
    for name in LONG_RUNNING:
        check = resolved["services"][name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), name


def test_chronoq_containers_are_locked_down(resolved: dict) -> None:
    for name in CHRONOQ_SERVICES:
        service = resolved["services"][name]
        assert service.get("read_only") is True, name
        tmpfs = service.get("tmpfs") or []
        tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
        assert any(entry.split(":")[0] == "/tmp" for entry in tmpfs), name
        assert service.get("cap_drop") == ["ALL"], name
        assert not service.get("cap_add"), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert not service.get("privileged"), name
        assert not service.get("volumes"), name  # nothing to write to but /tmp


def test_postgres_and_kafka_cannot_gain_privileges(resolved: dict) -> None:
    services = resolved["services"]
    for name in ("postgres", "kafka"):
        assert "no-new-privileges:true" in services[name].get("security_opt", []), name
        assert services[name].get("cap_drop") == ["ALL"], name
        assert not services[name].get("privileged"), name
    assert set(services["postgres"].get("cap_add", [])) <= POSTGRES_CAPS
    assert not services["kafka"].get("cap_add")  # the apache/kafka image runs as a non-root user


def test_kafka_listens_plaintext_only_inside_the_network(resolved: dict) -> None:
    env = _env(resolved["services"]["kafka"])
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"  # a compose-network name
    assert not resolved["services"]["kafka"].get("ports")


# -- the image --------------------------------------------------------------------------------


def _runtime_env() -> dict[str, str]:
    """ENV of the Dockerfile's last stage (the image that runs)."""
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _rest) in enumerate(instructions) if keyword == "FROM")
    env: dict[str, str] = {}
    for keyword, rest in instructions[last_from:]:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def test_image_runs_read_only_as_a_numeric_non_root_user() -> None:
    env = _runtime_env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"  # no .pyc written next to the code
    assert env.get("TMPDIR", "/tmp") == "/tmp"  # temporary files go to the tmpfs
    users = [rest for keyword, rest in _dockerfile_instructions() if keyword == "USER"]
    uid = users[-1].split(":")[0]
    # Numeric: Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0
