"""The storage fixtures (a fresh index on SQLite and on a real PostgreSQL server)."""

from tests.storage.conftest import database, postgres_server

__all__ = ["database", "postgres_server"]
