"""The results database (SQLite by default, any SQLAlchemy URL)."""

from copsd.db.schema import DONE, FAILED, PENDING, RUNNING, STATUSES
from copsd.db.store import DEFAULT_DB_URL, ResultsDB, db_url, open_db

__all__ = ["DEFAULT_DB_URL", "DONE", "FAILED", "PENDING", "RUNNING", "STATUSES", "ResultsDB", "db_url", "open_db"]
