"""Alembic environment: runs on the connection handed in by :func:`migrate`."""

from alembic import context

from pacs_hub.archive import models as archive_models  # noqa: F401 (tables of revision 0006)
from pacs_hub.storage.models import Base
from pacs_hub.trust import models as trust_models  # noqa: F401 (tables of revision 0004)

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
