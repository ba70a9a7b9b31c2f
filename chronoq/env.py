"""The client's two environment variables. They belong to the client only: the services'
settings loader (common/infra/config.py) reads just its own ``CHRONOQ_*`` names and leaves
these alone."""

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "CHRONOQ_URL"      # where the API is
TOKEN_ENV = "CHRONOQ_TOKEN"  # an API key or JWT, sent as Authorization: Bearer
