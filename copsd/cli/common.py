"""What every command module shares: the consoles and the options that recur."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

DB_OPT = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path; default $COPSD_DB or sqlite:///experiments.db")
ONLY_HELP = "filter: key=value[,value] (e.g. method=base, train.lr=1e-5); repeat to combine"


def say(message: str) -> None:
    """A progress line on stderr (stdout stays clean for tables and CSV)."""
    err_console.print(message, highlight=False)
