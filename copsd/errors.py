"""User-facing errors: one line that names the file/field and the fix, never a traceback."""

from copsd.redact import scrub, shorten


class CopsdError(Exception):
    """An error whose message is shown to the user as is (the CLI prints it and exits 2)."""


class SpecError(CopsdError):
    """A sweep spec that does not validate; the message names file, field path and what is allowed."""


class DataError(CopsdError):
    """A benchmark or training file that is missing or malformed."""


class ModelLoadError(CopsdError):
    """A model or tokenizer that cannot be loaded (bad path, unreachable Hub, ...)."""


def one_line(exc: BaseException) -> str:
    """Collapse an exception into the single line stored as a job's `last_error`."""
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, CopsdError):
        text = f"{type(exc).__name__}: {text}"
    return shorten(scrub(text), 1000)


def environment_error(exc: BaseException) -> str | None:
    """One line for failures the user's environment causes (a DB locked by another process, a full
    disk or database), found anywhere in the exception's chain; None for anything else (a bug)."""
    import errno

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        low = str(e).lower()
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "disk is full" in low or "no space left" in low:
            where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
            return (
                f"disk full{where}: {shorten(scrub(str(e)), 200)}; free space (or point --db/COPSD_DB, COPSD_RUNS "
                "elsewhere) and rerun: finished jobs are kept, the interrupted one resumes"
            )
        if "database is locked" in low or "database table is locked" in low:
            return (
                "the results database is locked by another process (waited COPSD_DB_LOCK_TIMEOUT, default 60 s); "
                "let it finish or raise COPSD_DB_LOCK_TIMEOUT, then rerun"
            )
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return None
