"""Alembic environment: runs on the connection `gateway.store.migrate` hands over, or on a URL."""

from alembic import context
from sqlalchemy import create_engine

from gateway.store import Base

config = context.config


def run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url")).connect() as fresh:
        run_migrations(fresh)
        fresh.commit()
