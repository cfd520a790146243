"""The `copsd` command line (Typer): the app, its command groups, and the entry point.

Every user error (bad spec, unknown language, missing data, unreachable Hub, ...) is printed as
one line `error: ...` on stderr with exit code 2; an interrupted sweep exits 130; a sweep with
failed jobs exits 1. Command groups live in modules named for them; plugins add theirs through
the `copsd.commands` entry points (the testbed's `copsd testbed ...`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.markup import escape

from copsd.cli import data, evaluate, report, speed, sweep, tune
from copsd.cli.common import err_console
from copsd.errors import CopsdError, environment_error
from copsd.plugins import plugin_commands
from copsd.redact import scrub, shorten

app = typer.Typer(
    name="copsd",
    help=(
        "Crosslingual On-Policy Self-Distillation experiments.\n\n"
        "A sweep spec (YAML) expands into jobs (language x model x method x seed x settings); each job "
        "trains (copsd, grpo, sft) or not (base) and evaluates; results go to a SQLite database "
        "(--db / COPSD_DB, default experiments.db) and MLflow (mlflow.db beside it).\n\n"
        "Start here:  copsd sweep plan demo  |  copsd sweep run demo  |  copsd report table --by language"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(sweep.app, name="sweep")
app.command("eval")(evaluate.eval_cmd)
app.command("tune")(tune.tune_cmd)
app.add_typer(data.app, name="data")
app.add_typer(report.app, name="report")
app.add_typer(speed.app, name="speed")
app.add_typer(speed.app, name="bench", hidden=True)  # the name `copsd speed` had before
for _name, _group in plugin_commands():
    app.add_typer(_group, name=_name)


def main() -> None:
    """Console-script entry point: user errors as one line, never a traceback."""
    try:
        rc = app(standalone_mode=False)  # returns the code of typer.Exit instead of raising it
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except CopsdError as exc:
        err_console.print(f"[red]error:[/red] {escape(_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click's own usage errors and our sweep interruption
        from copsd.run.sweep import SweepInterrupted

        if isinstance(exc, SweepInterrupted):
            err_console.print(escape(_line(exc)), highlight=False, soft_wrap=True)
            sys.exit(128 + int(exc.signum))
        for errors in _click_exception_modules():
            if isinstance(exc, getattr(errors, "ClickException", ())):
                click_exc: Any = exc
                click_exc.show()
                sys.exit(click_exc.exit_code)
            if isinstance(exc, getattr(errors, "Exit", ())):
                sys.exit(getattr(exc, "exit_code", 1))
            if isinstance(exc, getattr(errors, "Abort", ())):
                sys.exit(130)
        known = environment_error(exc)
        if known is not None:  # a locked or full database, a full disk: the user's to fix, not a bug
            err_console.print(f"[red]error:[/red] {escape(known)}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if os.environ.get("COPSD_DEBUG"):
            raise
        err_console.print(
            f"[red]error:[/red] unexpected {type(exc).__name__}: {escape(_line(exc))} "
            "(a bug: please report it; COPSD_DEBUG=1 shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


def _line(exc: BaseException) -> str:
    """An exception's message as one readable line with no secret in it (a driver's message may
    quote the DB URL; an expanded YAML value can be megabytes long)."""
    return shorten(scrub(str(exc)), 500)


def _click_exception_modules() -> list:
    """click's exceptions, and those of the click copy newer typer versions ship (typer._click)."""
    import importlib

    mods = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods
