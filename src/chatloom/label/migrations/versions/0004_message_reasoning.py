"""Assistant messages keep their `reasoning_content` (imported with the conversation, exported back unchanged).

A nullable Text column: rows written before it stay NULL (no reasoning). The downgrade drops the column, and with it
the reasoning it held (the message rows stay).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 16:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('messages', sa.Column('reasoning_content', sa.Text(), nullable=True))


def downgrade() -> None:
    # a plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch copy of `messages` would trip the foreign keys
    # that point at it
    op.drop_column('messages', 'reasoning_content')
