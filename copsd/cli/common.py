"""What every command module shares: the consoles and the options that recur."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from copsd.errors import CopsdError


def _width(stream) -> int | None:
    """A terminal's own width; piped or redirected output (a log file, `> table.txt`) gets room
    for a wide table instead of rich's 80 columns, which cut column names to an ellipsis."""
    if os.environ.get("COLUMNS") or stream.isatty():
        return None
    return 200


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))

DB_OPT = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path; default $COPSD_DB or sqlite:///experiments.db")
ONLY_HELP = "filter: key=value[,value] (e.g. method=base, train.lr=1e-5); repeat to combine"


def say(message: str) -> None:
    """A progress line on stderr (stdout stays clean for tables and CSV)."""
    err_console.print(message, highlight=False)


def existing_db_url(db: str | None) -> str:
    """The DB URL, refusing (one line) to create an SQLite file that does not exist yet: status and
    report commands read results, they never make an empty database."""
    from copsd.paths import db_url, sqlite_path

    url = db_url(db)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise CopsdError(f"no results database at {path}; run a sweep first (copsd sweep run SPEC) or pass --db")
    return url
