"""Projects pick the operator's draft endpoint by name (`draft_endpoint`); the key stays with the operator.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 12:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('projects', sa.Column('draft_endpoint', sa.String(length=64), nullable=True))


def downgrade() -> None:
    # a plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch copy of `projects` would trip the foreign keys
    # that point at it
    op.drop_column('projects', 'draft_endpoint')
