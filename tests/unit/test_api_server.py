"""Start-up of the API process, without serving."""

from __future__ import annotations

import pytest

from api.__main__ import main
from api.server import THREADS, ApiServer
from common.infra.config import load_settings
from common.infra.lifecycle import EXIT_CONFIG


def test_a_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHRONOQ_API_PORT", "eighty")
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert "CHRONOQ_API_PORT" in err and "\n" not in err


def test_gunicorn_is_configured_from_the_settings() -> None:
    settings = load_settings({}, api_host="0.0.0.0", api_port=9123, api_workers=3)
    cfg = ApiServer(settings).cfg
    assert cfg.bind == ["0.0.0.0:9123"]
    assert (cfg.workers, cfg.worker_class_str, cfg.threads) == (3, "gthread", THREADS)
    assert cfg.graceful_timeout > 0 and cfg.accesslog == "-"
    assert cfg.post_fork.__name__ == "_post_fork"
