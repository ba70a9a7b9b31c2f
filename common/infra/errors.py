"""chronoq's own exceptions. Driver errors (psycopg2, kafka-python) are wrapped into these at the
edge, inside ``common``, so services never catch a driver type."""

from __future__ import annotations


class ChronoqError(Exception):
    """Something went wrong in chronoq."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(ChronoqError):
    """A setting is missing or invalid."""


class JobNotFound(ChronoqError):
    """No such job."""

    def __init__(self, job_id: object) -> None:
        super().__init__(f"No job with id '{job_id}'")
        self.job_id = job_id


class DatabaseUnavailable(ChronoqError):
    """The database cannot be reached."""


class BrokerUnavailable(ChronoqError):
    """The Kafka broker cannot be reached."""


class MessageError(ChronoqError):
    """A message on a topic is malformed, truncated, of an unknown version or too large."""


class JobTimeout(ChronoqError):
    """The job ran longer than its timeout_seconds."""


class JobTypeError(ChronoqError):
    """Unknown or disabled job type."""
