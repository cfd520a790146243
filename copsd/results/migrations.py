"""The results DB's schema over time: the migrations (`MIGRATIONS`, version -> upgrade), running
them once however many processes open the DB together, and the read-only check of the version.

Apart from `copsd.results.db` because a schema change touches only this file (and
`copsd.results.schema`), never the code that claims jobs and stores results.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import sessionmaker

from copsd.errors import CopsdError
from copsd.results.connection import db_error_hint, is_race, raise_if_lock_timed_out
from copsd.results.schema import GRADER_COLUMNS, LANGUAGE_COLUMNS, Base, Meta

Migration = Callable[[Engine], None]


def _add_columns(table: str, columns: dict[str, str]) -> Migration:
    """A migration that adds nullable columns (skipping any a half-finished earlier run added)."""

    def migrate(engine: Engine) -> None:
        have = {c["name"] for c in inspect(engine).get_columns(table)}
        with engine.begin() as conn:
            for name, sql_type in columns.items():
                if name not in have:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))

    return migrate


def _v2(engine: Engine) -> None:
    _add_columns("jobs", {"provenance_json": "TEXT"})(engine)
    _add_columns("results", dict.fromkeys(GRADER_COLUMNS, "FLOAT"))(engine)


def _v3(engine: Engine) -> None:
    _add_columns("jobs", {"owner": "VARCHAR(255)"})(engine)


def _v4(engine: Engine) -> None:
    _add_columns("results", dict.fromkeys(LANGUAGE_COLUMNS, "FLOAT"))(engine)


# version -> function(engine) that upgrades a database from version-1 to version.
MIGRATIONS: dict[int, Migration] = {2: _v2, 3: _v3, 4: _v4}


def _newer(shown: str, current: int, target: int) -> CopsdError:
    return CopsdError(f"database '{shown}' has schema v{current}, newer than this copsd (v{target}); upgrade copsd")


def schema_is_current(session: sessionmaker, shown: str, target: int) -> bool:
    """Read-only open: the DB's schema is this copsd's (True), older (False), or refused."""
    try:
        with session() as s:
            row = s.get(Meta, "schema_version")
    except (OperationalError, ProgrammingError, DatabaseError) as exc:
        text_ = str(getattr(exc, "orig", exc)).lower()
        if "no such table" in text_ or "does not exist" in text_:
            raise CopsdError(
                f"database '{shown}' holds no copsd results (no 'meta' table); point --db/COPSD_DB at a "
                "results database, or run a sweep first"
            ) from None
        raise CopsdError(f"cannot open database '{shown}': {db_error_hint(exc)}") from None
    current = int(row.value) if row else None
    if current is None:
        raise CopsdError(f"database '{shown}' has no schema version; it is not a copsd results database")
    if current > target:
        raise _newer(shown, current, target)
    return current >= target


def migrate(engine: Engine, session: sessionmaker, shown: str, migrations: dict[int, Migration], target: int) -> None:
    """Create tables and run migrations; safe when several processes start on one DB at once
    (a race on table creation, the version row or a column shows up as an error that a retry
    resolves, since every step re-checks what exists)."""
    t0 = time.monotonic()
    for attempt in range(20):
        try:
            _migrate_once(engine, session, shown, migrations, target)
            return
        except (OperationalError, IntegrityError, ProgrammingError, DatabaseError) as exc:
            raise_if_lock_timed_out(exc, t0, shown)
            if not is_race(exc) or attempt == 19:
                raise CopsdError(f"cannot open database '{shown}': {db_error_hint(exc)}") from None
            time.sleep(0.05 * (attempt + 1))


def _migrate_once(
    engine: Engine, session: sessionmaker, shown: str, migrations: dict[int, Migration], target: int
) -> None:
    Base.metadata.create_all(engine)  # new tables only; never alters existing ones
    with session.begin() as s:
        row = s.get(Meta, "schema_version")
        current = int(row.value) if row else None
        if current is None:
            s.add(Meta(key="schema_version", value=str(target)))
            return
    if current > target:
        raise _newer(shown, current, target)
    for version in range(current + 1, target + 1):
        migrations[version](engine)  # idempotent: re-checks the columns it adds
        with session.begin() as s:
            row = s.get(Meta, "schema_version")
            if row is None or int(row.value) < version:
                s.merge(Meta(key="schema_version", value=str(version)))
