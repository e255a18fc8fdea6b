"""Alembic environment for the labeling app: runs on the connection handed over by `chatloom.label.db.migrate`
(or on `sqlalchemy.url` when alembic is run by hand)."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from chatloom.label.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = engine_from_config(config.get_section(config.config_ini_section) or {}, prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as conn:
        run(conn)
