"""Failed runs release the abstracts they claimed

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 18:15:00
"""
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A run that failed before this revision kept its claim on its new abstracts, so nothing trained
    # them again: release them, as a failing run now does (services/trainer/tasks.mark_failed).
    op.execute("UPDATE abstract SET train_run_id = NULL WHERE train_run_id IN "
               "(SELECT id FROM trainingrun WHERE status = 'failed')")


def downgrade() -> None:
    pass  # which abstracts a failed run had claimed is not kept: there is nothing to restore
