"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask_smorest import Blueprint

from common.core.roles import Role
from common.infra.db import ping

from api.auth import requires
from api.context import runtime
from api.schemas import HealthSchema

blp = Blueprint("health", __name__, description="Probes and metrics for operators.")


@blp.route("/healthz")
@requires(None)
@blp.response(200, HealthSchema)
def healthz() -> dict[str, Any]:
    """The process is alive (it checks nothing else)."""
    return {"status": "ok"}


@blp.route("/readyz")
@requires(None)
@blp.response(200, HealthSchema)
@blp.alt_response(503, description="The database does not answer.", success=False)
def readyz() -> dict[str, Any]:
    """Ready to serve: the database answers. A 503 otherwise (via DatabaseUnavailable)."""
    ping(runtime().settings)
    return {"status": "ok"}


@blp.route("/metrics")
@requires(Role.VIEWER)  # open when CHRONOQ_METRICS_AUTH=off (api/auth.py)
@blp.doc(responses={"200": {"description": "Prometheus text format.", "content": {"text/plain": {}}}})
def metrics() -> Response:
    """Prometheus metrics of the API: the sum of all its worker processes."""
    body, content_type = runtime().metrics.render()
    return Response(body, content_type=content_type)
