"""The dashboard's files at /ui: served from the package with a strict Content-Security-Policy,
open (they carry no data) while every API call they make needs a credential, nothing loaded
from another origin, and every module they import shipped."""

from __future__ import annotations

import configparser
import fnmatch
import re
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.ui import STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]
IMPORT = re.compile(r"""^\s*import\s[^"']*["']([^"']+)["']""", re.MULTILINE)


@pytest.fixture(scope="module")
def client() -> Iterator[FlaskClient]:
    from common.infra.config import load_settings

    app: Flask = create_app(replace(load_settings({}, database_url="sqlite://"), auth_enabled=True))
    yield app.test_client()
    app.extensions["chronoq"].close()


def files() -> list[Path]:
    return sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())


def test_the_page_is_served_with_a_strict_policy(client: FlaskClient) -> None:
    redirect = client.get("/ui")
    assert redirect.status_code == 308 and redirect.headers["Location"].endswith("/ui/")
    page = client.get("/ui/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    html = page.get_data(as_text=True)
    # No inline script (the policy would block it anyway) and no inline style or handler.
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="/ui/static/app.js">']
    assert not re.search(r"\son\w+=|style=", html)


def test_every_file_is_served_and_every_import_resolves(client: FlaskClient) -> None:
    served = {}
    for path in files():
        relative = path.relative_to(STATIC_DIR).as_posix()
        response = client.get(f"/ui/static/{relative}")
        assert response.status_code == 200, relative
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        served[relative] = response
        if path.suffix == ".js":
            assert response.mimetype in ("text/javascript", "application/javascript"), relative
            for target in IMPORT.findall(path.read_text()):
                assert target.startswith("."), f"{relative} imports {target}: only the package's own modules"
                resolved = (path.parent / target).resolve()
                assert resolved.is_file(), f"{relative} imports {target}, which is not shipped"
    assert {"app.js", "api.js", "live.js", "dom.js", "style.css", "index.html"} <= set(served)
    for bad in ("/ui/static/../app.py", "/ui/static/%2e%2e/app.py", "/ui/static/nope.js"):
        assert client.get(bad).status_code == 404


def test_nothing_comes_from_elsewhere_and_nothing_is_written_as_html() -> None:
    for path in files():
        text = path.read_text()
        # The SVG namespace is a name (createElementNS), never fetched: the one URL allowed.
        assert not re.search(r"https?://", text.replace('"http://www.w3.org/2000/svg"', "")), \
            f"{path.name} names another origin"
        if path.suffix == ".js":
            # Values are written with textContent (dom.js): user input never becomes markup.
            assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function",
                                 text), path.name


def test_the_files_open_without_a_credential_but_the_data_does_not(client: FlaskClient) -> None:
    assert client.get("/ui/").status_code == 200
    assert client.get("/ui/static/app.js").status_code == 200
    for path in ("/api/me", "/api/overview", "/api/jobs"):
        assert client.get(path).status_code == 401, path


def test_the_package_ships_every_file() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in config["options.package_data"]["api"].split(",")]
    for path in files():
        relative = path.relative_to(STATIC_DIR.parent).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), f"{relative} is not in package_data"


def test_the_ui_routes_stay_out_of_the_api_description(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    assert not any(path.startswith("/ui") for path in paths)
    assert {"/api/me", "/api/overview"} <= set(paths)
