"""Where reports go: a bad target is refused with one line before anything is written, and a
write that fails (disk full, quota, a file-size limit) is one line naming the path.

A target is refused when it lies on a device or kernel file system (`/dev/full`, `/proc/...`,
`/sys/...`; `/dev/shm` is an ordinary tmpfs and allowed), when a file is expected and a directory
(or a FIFO, socket or device) is there, or the other way round, and when its nearest existing
ancestor is a file or not writable. Missing parent directories are created, as they are for the
default `reports/` beside the results DB. Files are written under a temporary name and renamed,
so a failed write leaves the earlier report (or nothing), never half a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from copsd.errors import CopsdError

# kernel and device file systems: nothing a report belongs in (`/dev/shm` is a plain tmpfs)
_SPECIAL = (Path("/proc"), Path("/sys"), Path("/dev"))
_ORDINARY_UNDER_SPECIAL = (Path("/dev/shm"),)


def _where(option: str | None, path: Path) -> str:
    return f"{option} {path}" if option else str(path)


def _resolved(path: Path, option: str | None) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a name too long, a link loop
        raise CopsdError(f"{_where(option, path)}: not a usable path ({exc})") from None


def _on_special_fs(real: Path) -> bool:
    if any(real == p or p in real.parents for p in _ORDINARY_UNDER_SPECIAL):
        return False
    return any(real == p or p in real.parents for p in _SPECIAL)


def _check_ancestor(path: Path, option: str | None) -> None:
    """The nearest existing ancestor of `path` must be a writable directory (the rest is created)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CopsdError(f"{_where(option, path)}: {parent} is not a directory; choose a path in a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CopsdError(f"{_where(option, path)}: cannot write in {parent} (permission denied or read-only)")


def check_file_target(
    path: Path,
    option: str | None = "--out",
    *,
    beside: Iterable[Path] = (),
    dirs_beside: Iterable[Path] = (),
    example: str = "report",
) -> Path:
    """Refuse (CopsdError, one line) a file target that cannot or must not be written; `beside`
    are further files, `dirs_beside` further directories, the command writes next to it;
    `example` is the file name suggested when a directory is given."""
    try:
        real = _resolved(path, option)
        if _on_special_fs(real):
            raise CopsdError(
                f"{_where(option, path)}: a device or kernel file system ({real}) is no place for a report; "
                "choose a file in an ordinary directory"
            )
        for p in (path, *beside):
            if p.is_dir():
                raise CopsdError(f"{_where(option, path)}: {p} is a directory; give a file path (e.g. {p / example})")
            if p.exists() and not p.is_file():
                raise CopsdError(
                    f"{_where(option, path)}: {p} exists and is not a regular file (a device, FIFO or socket)"
                )
        for d in dirs_beside:
            if d.exists() and not d.is_dir():
                raise CopsdError(f"{_where(option, path)}: {d} is in the way (a file where a folder is written)")
        _check_ancestor(path, option)
    except OSError as exc:  # stat itself failed: a name too long, an unreadable directory, ...
        raise CopsdError(f"{_where(option, path)}: not a usable path ({exc.strerror or exc})") from None
    return path


def check_dir_target(path: Path, option: str | None = "--out-dir") -> Path:
    """Refuse (CopsdError, one line) a directory target that cannot or must not be written in."""
    try:
        real = _resolved(path, option)
        if _on_special_fs(real):
            raise CopsdError(
                f"{_where(option, path)}: a device or kernel file system ({real}) is no place for reports; "
                "choose an ordinary directory"
            )
        if path.exists() and not path.is_dir():
            raise CopsdError(f"{_where(option, path)}: not a directory (a file is there); give a directory")
        if path.is_dir():
            if not os.access(path, os.W_OK | os.X_OK):
                raise CopsdError(f"{_where(option, path)}: cannot write in it (permission denied or read-only)")
        else:
            _check_ancestor(path, option)
    except OSError as exc:
        raise CopsdError(f"{_where(option, path)}: not a usable path ({exc.strerror or exc})") from None
    return path


def _why(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        text += "; free some space or write elsewhere with --out/--out-dir"
    return text


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Any OSError inside (disk full, quota, permission, a directory in the way) as one line."""
    try:
        yield
    except OSError as exc:
        raise CopsdError(f"cannot write {path}: {_why(exc)}") from None


def make_dir(path: Path) -> Path:
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _temp_name(real: Path) -> Path:
    return real.with_name(f".{real.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path to write, renamed over `path` when the block ends without error (the
    temporary file is removed otherwise); OSError as one line naming `path`."""
    make_dir(path.parent)
    real = Path(os.path.realpath(path))  # through a symlink: the link stays, its target is replaced
    tmp = _temp_name(real)
    try:
        with writing(path):
            yield tmp
            os.replace(tmp, real)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """`text` to `path` (UTF-8), atomically; parents created; errors as one line."""
    with replacing(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
    return path


def file_stem(name: str) -> str:
    """A sweep name as part of a file name: path separators and control characters replaced."""
    return re.sub(r"[\x00-\x1f\x7f/\\]", "_", name).strip() or "_"
