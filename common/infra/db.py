"""The one database session helper: an engine per URL and a transactional ``session_scope``.
Driver errors that mean "the database is not there" become :class:`DatabaseUnavailable`."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.infra.config import Settings
from common.infra.errors import DatabaseUnavailable

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


def build_engine(url: str, pool_size: int = 10) -> Engine:
    """A new engine for ``url``; SQLite gets WAL and a busy timeout, PostgreSQL a checked pool."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    extra: dict = {}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
        # Batched UPDATE executemany: the scanner and the result writer update hundreds of
        # rows per transaction, one round trip per page instead of per row.
        extra["executemany_mode"] = "values_plus_batch"
    return create_engine(
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
