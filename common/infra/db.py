"""The one database session helper: an engine per URL and a transactional ``session_scope``.
Driver errors that mean "the database is not there" become :class:`DatabaseUnavailable`; a URL no
engine can be built from (unknown scheme, driver not installed) becomes :class:`ConfigError`.
Both name ``CHRONOQ_DATABASE_URL``, with its password masked."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.infra.config import PREFIX, Settings, mask_url
from common.infra.errors import ConfigError, DatabaseUnavailable

DATABASE_URL_ENV = PREFIX + "DATABASE_URL"

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}


def _sqlite_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # Several processes share the local file: WAL lets readers run beside the one writer and
    # busy_timeout makes a writer wait for the lock rather than fail at once. pysqlite's own
    # transaction handling is switched off so that ``_sqlite_begin`` decides how to begin.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
    # Take the write lock up front so a read-then-write transaction cannot deadlock against
    # another process that did the same (SQLite has no SELECT ... FOR UPDATE).
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def masked_url(url: str) -> str:
    """``url`` with its password shown as ``***``, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not parseable: mask what sits between "user:" and "@"
        return mask_url(url)


def _one_line(exc: BaseException) -> str:
    # Driver messages (psycopg2's above all) span several lines; a start-up error is one.
    return " ".join(str(exc).split()) or type(exc).__name__


def _unusable(url: str, exc: Exception) -> ConfigError:
    """The :class:`ConfigError` for a URL that no engine can be built from."""
    if isinstance(exc, NoSuchModuleError):
        reason = (
            f"unknown database scheme {url.partition('://')[0]!r}; use "
            "postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.db"
        )
    elif isinstance(exc, ImportError):
        reason = (
            f"its database driver is not installed ({_one_line(exc)}); chronoq ships psycopg2 "
            "for postgresql:// URLs (SQLite needs no driver)"
        )
    else:
        reason = f"not a usable database URL ({_one_line(exc)})"
    return ConfigError(f"{DATABASE_URL_ENV}={masked_url(url)}: {reason}")


def _create(url: str, **kwargs: Any) -> Engine:
    # create_engine loads the dialect and imports the driver but does not connect: what fails
    # here is the URL, never the network.
    try:
        return create_engine(url, **kwargs)
    except (ArgumentError, ImportError, ValueError, TypeError) as exc:
        raise _unusable(url, exc) from None


def build_engine(url: str, pool_size: int = 10) -> Engine:
    """A new engine for ``url``; SQLite gets WAL and a busy timeout, PostgreSQL a checked pool.
    Raises :class:`ConfigError` naming the variable if no engine can be built from ``url``."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise _unusable(url, exc) from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = _create(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    extra: dict = {}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
        # Batched UPDATE executemany: the scanner and the result writer update hundreds of
        # rows per transaction, one round trip per page instead of per row.
        extra["executemany_mode"] = "values_plus_batch"
    return _create(
        url,
        **extra,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {},
    )


def get_engine(settings: Settings) -> Engine:
    """The process-wide engine for the configured database."""
    url = settings.resolved_database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = build_engine(url, settings.db_pool_size)
            _sessionmakers[url] = sessionmaker(engine, expire_on_commit=False)
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (at shutdown, and after fork in gunicorn workers)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _sessionmakers.clear()


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    get_engine(settings)
    session = _sessionmakers[settings.resolved_database_url]()
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise DatabaseUnavailable(f"database unavailable: {exc.orig}") from exc
    except DBAPIError as exc:
        session.rollback()
        if exc.connection_invalidated:
            raise DatabaseUnavailable(f"database connection lost: {exc.orig}") from exc
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(settings: Settings) -> None:
    """Raise :class:`DatabaseUnavailable` unless the database answers ``SELECT 1``."""
    with session_scope(settings) as session:
        session.execute(text("SELECT 1"))


def check_database_url(settings: Settings) -> None:
    """Raise :class:`ConfigError` naming ``CHRONOQ_DATABASE_URL`` unless an engine can be built
    from it (known scheme, driver installed). Connects to nothing and creates no file."""
    url = settings.resolved_database_url
    _create(url).dispose()


def check_database(settings: Settings) -> None:
    """The start-up check: :func:`check_database_url`, then one ``SELECT 1``; a database that
    does not answer raises :class:`DatabaseUnavailable` naming ``CHRONOQ_DATABASE_URL``."""
    url = settings.resolved_database_url
    engine = build_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise DatabaseUnavailable(
            f"{DATABASE_URL_ENV}={masked_url(url)}: cannot connect to the database ({_one_line(exc.orig)})"
        ) from None
    finally:
        engine.dispose()
