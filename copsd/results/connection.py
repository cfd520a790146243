"""Opening the results DB's engine: the lock timeout (`COPSD_DB_LOCK_TIMEOUT`), SQLite's pragmas,
waiting for another process's write lock, read-only opens, and one-line hints for database errors.

Apart from `copsd.results.db` because it is about connecting (what any command meets before it
reads or writes a row), not about the rows: `db.py` and `migrations.py` both use it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DatabaseError, OperationalError

from copsd.errors import CopsdError


def lock_timeout_s() -> float:
    """How long a command waits for another process's write lock on a SQLite results DB
    (`COPSD_DB_LOCK_TIMEOUT`, seconds; default 60) before it gives up with one line."""
    raw = os.environ.get("COPSD_DB_LOCK_TIMEOUT", "60")
    try:
        value = float(raw)
    except ValueError:
        raise CopsdError(
            f"COPSD_DB_LOCK_TIMEOUT={raw!r} is not a number of seconds; e.g. COPSD_DB_LOCK_TIMEOUT=60"
        ) from None
    if not 0 <= value <= 86_400:
        raise CopsdError(f"COPSD_DB_LOCK_TIMEOUT={raw} is out of range; give 0 to 86400 seconds")
    return value


def db_error_hint(exc: Exception) -> str:
    text = " ".join(str(getattr(exc, "orig", exc)).split())  # a server's multi-line message on one line
    low = text.lower()
    if "not a database" in low or "malformed" in low:
        return f"{text} (not an SQLite results database, or damaged: point --db/COPSD_DB elsewhere)"
    if "disk is full" in low or "no space left" in low:
        return f"disk full: {text} (free space, or point --db/COPSD_DB elsewhere)"
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return f"{text} (check that the file and its directory are writable)"
    return text


def is_race(exc: Exception) -> bool:
    """An error another process starting at the same moment causes, which a retry resolves."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(w in text for w in ("locked", "already exists", "duplicate", "unique", "busy"))


def locked_message(shown: str, waited_s: float) -> str:
    return (
        f"results database {shown} is locked: another process holds its write lock (waited {waited_s:.0f} s); "
        "let that process finish (copsd sweep status shows RUNNING jobs), or wait longer with COPSD_DB_LOCK_TIMEOUT=SECONDS"
    )


def raise_if_lock_timed_out(exc: Exception, t0: float, shown: str) -> None:
    """A lock that outlasted the busy timeout is another process's, not a start-up race: one
    line naming it, instead of 20 retries of a minute each."""
    text_ = str(getattr(exc, "orig", exc)).lower()
    waited = time.monotonic() - t0
    if ("locked" in text_ or "busy" in text_) and waited >= min(1.0, lock_timeout_s()):
        raise CopsdError(locked_message(shown, waited)) from None


def _sqlite_pragmas(timeout_s: float, readonly: bool) -> Callable:
    def on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        if readonly:
            cur.execute("PRAGMA query_only=ON")  # a reading command cannot write, whatever it calls
        else:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def wait_for_write_lock(path, shown: str, timeout_s: float) -> None:
    """Before a writing command starts: if another process holds the SQLite write lock, say so
    once, wait up to `timeout_s`, then stop with one line (instead of minutes of silence)."""
    import sqlite3
    import sys

    def try_lock(wait: float) -> bool:
        con = sqlite3.connect(path, timeout=wait, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            return True  # not a lock: the real open reports it
        finally:
            con.close()

    if not path.exists() or try_lock(0.2):
        return
    print(f"copsd: waiting up to {timeout_s:.0f} s for the write lock on {shown} (held by another process; "
          "COPSD_DB_LOCK_TIMEOUT sets the wait)", file=sys.stderr, flush=True)  # fmt: skip
    t0 = time.monotonic()
    if not try_lock(timeout_s):
        raise CopsdError(locked_message(shown, time.monotonic() - t0 + 0.2))


def open_engine(url: str, shown: str, path: Path | None, timeout: float, readonly: bool) -> Engine:
    """The engine for `url` (`path`: its SQLite file, None for a server). Read-only: PostgreSQL's
    transactions read-only, a SQLite file opened read-only (or, on a read-only disk, immutable)."""
    if path is None:
        args: dict = {}
        if readonly and url.startswith("postgresql"):
            args = {"options": "-c default_transaction_read_only=on"}
        return create_engine(url, connect_args=args)
    if not readonly:
        engine = create_engine(url, connect_args={"timeout": timeout})
        event.listen(engine, "connect", _sqlite_pragmas(timeout, readonly=False))
        return engine
    # read-only: the file as SQLite opens it read-only; if even that needs a write (a WAL
    # database without its -shm file on a read-only disk), as an immutable file
    for flags in ("mode=ro", "immutable=1"):
        engine = create_engine(f"sqlite:///file:{path.resolve()}?{flags}&uri=true", connect_args={"timeout": timeout})
        event.listen(engine, "connect", _sqlite_pragmas(timeout, readonly=True))
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT count(*) FROM sqlite_master"))
            return engine
        except OperationalError as exc:
            engine.dispose()
            low = str(exc).lower()
            if flags == "immutable=1" or not any(w in low for w in ("unable to open", "readonly", "read-only")):
                raise CopsdError(f"cannot open database '{shown}': {db_error_hint(exc)}") from None
        except DatabaseError as exc:
            engine.dispose()
            raise CopsdError(f"cannot open database '{shown}': {db_error_hint(exc)}") from None
    raise AssertionError("unreachable")
