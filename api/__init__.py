"""chronoq's HTTP API: a Flask + flask-smorest app served by gunicorn (``python -m api``)."""

from api.app import create_app

__all__ = ["create_app"]
