"""The web dashboard at /ui: static files (HTML, CSS, plain ES modules) shipped inside the
package, never fetched from elsewhere.

The files carry no data: every figure the pages show comes from the API through ``fetch`` with
the caller's ``Authorization`` header, so it passes the API's own authentication, roles and
tenant scoping. The files themselves are therefore open (like the /docs page's scripts), and
every answer carries a strict Content-Security-Policy: scripts, styles and connections from
this origin only, no inline script, no framing."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, Response, redirect, send_from_directory

from api.auth import requires

#: Where the dashboard's files are (package data: see setup.cfg).
STATIC_DIR = Path(__file__).with_name("ui_static")
PREFIX = "/ui"

#: No inline script or style, nothing from another origin; the pages are never framed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _secured(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


@requires(None)  # carries no data (see the module docstring)
def _root() -> Response:
    return _secured(redirect(PREFIX + "/", code=308))


@requires(None)
def _index() -> Response:
    # Revalidated each time: a new release's page must not load an old release's modules.
    response = send_from_directory(STATIC_DIR, "index.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return _secured(response)


@requires(None)
def _asset(filename: str) -> Response:
    response = send_from_directory(STATIC_DIR, filename, max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return _secured(response)


def install(app: Flask) -> None:
    """Serve the dashboard: /ui (the page) and /ui/static/<file> (its modules and styles)."""
    app.add_url_rule(PREFIX, endpoint="ui-root", view_func=_root)
    app.add_url_rule(PREFIX + "/", endpoint="ui-index", view_func=_index)
    app.add_url_rule(PREFIX + "/static/<path:filename>", endpoint="ui-asset", view_func=_asset)
