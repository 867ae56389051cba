"""The index database: engine set-up for SQLite (embedded, WAL) and PostgreSQL.

SQLite is tuned for a durable, concurrent archive: WAL journal, ``synchronous=FULL``
(a committed index row survives power loss, not only a crash), ``BEGIN IMMEDIATE``
transactions so that concurrent gateway processes queue for the write lock instead
of failing on upgrade, and ``case_sensitive_like`` so that LIKE follows PS3.4
C.2.2.2.4 (case-sensitive wildcard matching) and can use the B-tree indexes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, FromClause, Table, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

LOGGER = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA case_sensitive_like=ON")
    cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return  # a reader: each statement is its own snapshot, no write lock
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Create the index engine for ``url`` (``sqlite:///...`` or ``postgresql+psycopg://``)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def insert_returning_id(table: FromClause) -> tuple[tuple[str, ...], str]:
    """Every column of ``table`` (a model's ``__table__``) but ``id``, and the plain
    ``INSERT ... RETURNING id`` of a row of them (``?`` markers, see
    :meth:`Database.driver_sql`)."""
    assert isinstance(table, Table)
    columns = tuple(c.name for c in table.columns if c.name != "id")
    marks = ", ".join("?" * len(columns))
    return columns, f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks}) RETURNING id"


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest alembic revision (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    """An engine plus a session factory: the one handle every service receives."""

    def __init__(self, url: str, *, run_migrations: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if run_migrations:
            migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._kept: list[Any] = []  # DBAPI connections not in use (list.pop/append are atomic)

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite index."""
        return self.engine.dialect.name == "sqlite"

    def driver_sql(self, statement: str) -> str:
        """A plain SQL ``statement`` written with ``?`` markers, in the driver's own
        parameter style (for statements run straight on a DBAPI cursor)."""
        if self.engine.dialect.paramstyle == "qmark":
            return statement
        return statement.replace("?", "%s")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """A Core connection for reading (no write lock is taken on SQLite)."""
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only session (no write lock is taken on SQLite)."""
        with self.read_connection() as conn, Session(bind=conn) as session:
            yield session

    @contextmanager
    def kept_connection(self) -> Iterator[Any]:
        """A bare DBAPI connection for the ingest hot path, kept for the next caller after.

        Taken from the engine's pool once (so set up by its connect events) and then
        kept out of it: the pool's check-out and check-in (events, a reset on return)
        cost more than the few statements run on it. The caller ends any transaction
        it opens; one that raised is rolled back, or closed if even that fails.
        """
        try:
            raw = self._kept.pop()
        except IndexError:
            fairy = self.engine.raw_connection()
            fairy.detach()  # ours from now on; the pool may open another in its place
            raw = fairy.dbapi_connection
        try:
            yield raw
        except BaseException:
            try:
                raw.rollback()
            except Exception:
                raw.close()  # broken (a lost server): not kept; the caller's error stands
            else:
                self._kept.append(raw)
            raise
        self._kept.append(raw)

    def dispose(self) -> None:
        """Close every pooled and kept connection."""
        self.engine.dispose()
        while self._kept:
            self._kept.pop().close()
