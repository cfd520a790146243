"""User-facing errors: one line that names the file/field and the fix, never a traceback."""


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
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    if not isinstance(exc, CopsdError):
        text = f"{type(exc).__name__}: {text}"
    return text[:1000]
