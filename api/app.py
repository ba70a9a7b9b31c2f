"""The app factory."""

from __future__ import annotations

from flask import Flask, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path
from werkzeug.middleware.proxy_fix import ProxyFix

import common
from common.infra.config import Settings, load_settings

from api import admin, audit, auth, control, events, health, jobs, me, metrics, overview, publish, schedules, ui, workflows
from api.context import EXTENSION, Runtime
from api.encoding import OrjsonProvider
from api.errors import ChronoqApi, register_error_handlers

#: Where the /docs page loads Swagger UI's scripts and styles from: this API, out of the
#: swagger-ui-bundle package, never a CDN (a machine without internet gets the page too).
SWAGGER_UI_ASSETS = "/docs/assets/"


@auth.requires(None)  # open, like the page itself: the scripts say nothing about anyone's data
def _swagger_asset(filename: str) -> Response:
    return send_from_directory(swagger_ui_path, filename, max_age=86400)


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
        OPENAPI_SWAGGER_UI_URL=SWAGGER_UI_ASSETS,
        # Requests naming another host are refused (400): a web page cannot drive a local
        # chronoq by pointing a DNS name of its own at 127.0.0.1.
        TRUSTED_HOSTS=list(settings.trusted_hosts) or None,
    )
    app.json = OrjsonProvider(app)
    if settings.proxy_hops:
        # Behind a load balancer every peer is the proxy: its X-Forwarded-* name the client.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops,  # type: ignore[method-assign]
                                x_host=settings.proxy_hops)
    rt = app.extensions[EXTENSION] = Runtime(settings)
    publish.install(app, rt)
    api = ChronoqApi(app, spec_kwargs={"info": {"description": "Run jobs at an exact future time."}})
    app.extensions["chronoq-api"] = api
    api.spec.components.security_scheme(auth.SCHEME, {
        "type": "http", "scheme": "bearer",
        "description": "An API key (`cq_…`, from `chronoq keys create` or POST /api/keys) or, where an "
                       "identity provider is configured, a JWT.",
    })
    register_error_handlers(app, api)
    metrics.install(app)  # first: a request authentication answers is timed too
    auth.install(app)
    audit.install(app)
    api.register_blueprint(jobs.blp)
    api.register_blueprint(control.blp)
    api.register_blueprint(schedules.blp)
    api.register_blueprint(workflows.blp)
    api.register_blueprint(admin.keys)
    api.register_blueprint(admin.tenants)
    api.register_blueprint(admin.audit)
    api.register_blueprint(health.blp)
    api.register_blueprint(events.blp)
    api.register_blueprint(me.blp)
    api.register_blueprint(overview.blp)
    app.add_url_rule(SWAGGER_UI_ASSETS + "<path:filename>", endpoint="api-docs-assets", view_func=_swagger_asset)
    ui.install(app)
    return app
