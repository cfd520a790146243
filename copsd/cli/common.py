"""What every command module shares: the consoles and the options that recur."""

from __future__ import annotations

import typer
from rich.console import Console

from copsd.errors import CopsdError

console = Console()
err_console = Console(stderr=True)

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
