"""One current review per reviewer and message, one current ranking per ranker and prompt.

Reviews (rankings) that were already duplicated are kept: per (message, reviewer) the newest row stays current and the
earlier ones are marked `superseded`; then a partial unique index over the current rows makes the rule hold in the
database itself. The downgrade drops the index and the column (the rows stay).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 12:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

TABLES = (("reviews", "message_id", "reviewer_id", "uq_reviews_current"),
          ("rankings", "parent_id", "ranker_id", "uq_rankings_current"))


def upgrade() -> None:
    for table, target, person, index in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('superseded', sa.Boolean(), server_default=sa.false(), nullable=False))
        rows = sa.table(table, sa.column("id", sa.Integer), sa.column(target, sa.Integer),
                        sa.column(person, sa.Integer), sa.column("superseded", sa.Boolean))
        newest = sa.select(sa.func.max(rows.c.id)).group_by(rows.c[target], rows.c[person])
        op.execute(rows.update().where(rows.c.id.not_in(newest)).values(superseded=True))
        op.create_index(index, table, [target, person], unique=True, sqlite_where=sa.text("NOT superseded"),
                        postgresql_where=sa.text("NOT superseded"))


def downgrade() -> None:
    for table, _target, _person, index in TABLES:
        op.drop_index(index, table_name=table)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('superseded')
