"""Where results go: the results database (SQLite by default, any SQLAlchemy URL) and MLflow."""

from copsd.results.db import ResultsDB, existing_statuses, open_db, status_counts
from copsd.results.schema import DONE, FAILED, PENDING, RUNNING, STATUSES

__all__ = [
    "DONE",
    "FAILED",
    "PENDING",
    "RUNNING",
    "STATUSES",
    "ResultsDB",
    "existing_statuses",
    "open_db",
    "status_counts",
]
