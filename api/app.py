"""The app factory."""

from __future__ import annotations

from flask import Flask, Response, request

import common
from common.infra.config import Settings, load_settings

from api import health, jobs, publish
from api.context import EXTENSION, Runtime, runtime
from api.encoding import OrjsonProvider
from api.errors import ChronoqApi, register_error_handlers

SWAGGER_UI_CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/"


def create_app(settings: Settings | None = None) -> Flask:
    """A configured API app; settings from the environment when not given (a bad variable
    raises ``ConfigError`` naming it)."""
    settings = settings if settings is not None else load_settings()
    app = Flask("chronoq.api")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        API_TITLE="chronoq",
        API_VERSION=common.__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_UI_CDN,
    )
    app.json = OrjsonProvider(app)
    rt = app.extensions[EXTENSION] = Runtime(settings)
    publish.install(app, rt)
    api = ChronoqApi(app, spec_kwargs={"info": {"description": "Run jobs at an exact future time."}})
    register_error_handlers(app, api)
    api.register_blueprint(jobs.blp)
    api.register_blueprint(health.blp)
    app.after_request(_count_request)
    return app


def _count_request(response: Response) -> Response:
    # The route pattern, not the path: ids in paths would make a label per job.
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    runtime().metrics.requests.labels(request.method, endpoint, str(response.status_code)).inc()
    return response
