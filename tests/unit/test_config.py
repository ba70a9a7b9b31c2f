import pytest

from common.infra.config import load_settings, options
from common.infra.errors import ConfigError


def test_defaults_need_no_environment():
    settings = load_settings({})
    assert settings.topic_jobs == "scheduled-jobs-topic"
    assert settings.default_max_retries == 3
    assert settings.resolved_database_url.startswith("sqlite:///") and settings.resolved_database_url.endswith(".chronoq/chronoq.db")


def test_values_are_parsed_from_the_environment():
    settings = load_settings({
        "CHRONOQ_SCAN_INTERVAL_SECONDS": "2.5", "CHRONOQ_SHELL_ENABLED": "yes",
        "CHRONOQ_HTTP_ALLOWED_HOSTS": "a.example, *.b.example", "CHRONOQ_DATABASE_URL": "postgresql://x/y",
    })
    assert settings.scan_interval_seconds == 2.5 and settings.shell_enabled is True
    assert settings.http_allowed_hosts == ("a.example", "*.b.example")
    assert settings.resolved_database_url == "postgresql+psycopg2://x/y"  # the driver chronoq installs


@pytest.mark.parametrize("name, value", [
    ("CHRONOQ_SCAN_INTERVAL_SECONDS", "soon"),
    ("CHRONOQ_SCAN_INTERVAL_SECONDS", "0"),
    ("CHRONOQ_SHELL_ENABLED", "maybe"),
    ("CHRONOQ_DEFAULT_MAX_RETRIES", "11"),
])
def test_bad_value_names_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_every_option_has_a_prefixed_name_and_help():
    for env, help_text, _default in options():
        assert env.startswith("CHRONOQ_") and help_text


def test_group_prefix_names_both_groups_and_defaults_to_todays_names():
    assert (load_settings({}).executor_group, load_settings({}).results_group) == ("chronoq-executors", "chronoq-results")
    staging = load_settings({"CHRONOQ_GROUP_PREFIX": "staging.chronoq"})
    assert (staging.executor_group, staging.results_group) == ("staging.chronoq-executors", "staging.chronoq-results")


@pytest.mark.parametrize("raw", ["has space", "a/b", "ünïcode", " "])
def test_a_group_prefix_kafka_would_refuse_is_a_config_error(raw):
    with pytest.raises(ConfigError, match="CHRONOQ_GROUP_PREFIX"):
        load_settings({"CHRONOQ_GROUP_PREFIX": raw})


def test_health_port_is_off_unless_opened_and_checked():
    assert load_settings({}).health_port == 0 and load_settings({}).health_host == "127.0.0.1"
    with pytest.raises(ConfigError, match="CHRONOQ_HEALTH_PORT"):
        load_settings({"CHRONOQ_HEALTH_PORT": "70000"})
