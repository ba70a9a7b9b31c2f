"""``gunicorn api.wsgi:app``: the app built from the environment. Prefer ``python -m api``,
which also sets the worker class, threads and the post-fork engine reset."""

from __future__ import annotations

from common.infra.config import load_settings
from common.infra.logs import setup_logging

from api.app import create_app

settings = load_settings()
setup_logging(settings.log_level, "api", settings.log_format)
app = create_app(settings)
