"""The README documents every setting (the table is what users read)."""

from pathlib import Path

from common.infra.config import options

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    missing = [env for env, _help, _default in options() if f"| `{env}` |" not in README]
    assert missing == []


def test_the_two_commands_are_there():
    assert ".venv/bin/chronoq up" in README
    assert ".venv/bin/python -m pytest" in README
    assert ".venv/bin/python -m pytest" in Path(__file__).parents[2].joinpath(".ci/run").read_text()
