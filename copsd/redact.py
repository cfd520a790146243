"""Secrets never leave the process: every URL or message shown to people passes through here.

A results DB or MLflow URL may carry a password (`postgresql+psycopg://user:PASSWORD@host/db`,
`http://user:TOKEN@mlflow:5000`, `...?password=...`). `display_url` is the one way such a URL is
rendered for people (messages, logs, reports, MLflow tags, SLURM logs); `scrub` is the net under
it for free text that may quote a URL (a driver's error message, a traceback line). Both mask the
way SQLAlchemy's `render_as_string(hide_password=True)` does (`user:***@host`), and also the
query parameters that carry credentials, and the values of the credential environment variables
MLflow and libpq read.
"""

from __future__ import annotations

import os
import re

MASK = "***"

# scheme://user:password@  (the password may hold '@' or ':'; it ends at the last '@' before a
# '/', whitespace or a quote; a raw '/' cannot appear in a URL's password)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)(?P<secret>[^\s/'\"]*)@")
# ?password=...&token=...  (query parameters that hold credentials; case-insensitive)
_QUERY = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|pass|token|access_token|auth_token|api_key|apikey|secret|"
    r"client_secret|sslpassword)=)(?P<secret>[^&;\s'\"#]*)",
    re.IGNORECASE,
)
# environment variables whose values are credentials wherever they appear
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD", "DATABRICKS_TOKEN")


def scrub(text: str) -> str:
    """`text` with every URL password, credential query value and credential env value masked."""
    if not text:
        return text
    out = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@" if m["secret"] else m[0], text)
    out = _QUERY.sub(lambda m: f"{m['head']}{MASK}" if m["secret"] else m[0], out)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            out = out.replace(value, MASK)
    return out


def display_url(url: str | None) -> str:
    """A DB or tracking URL as people may see it: `postgresql+psycopg://user:***@host/db`."""
    return scrub(url or "")


def shorten(text: str, limit: int = 500) -> str:
    """One readable line: at most `limit` characters, the cut said (a 300 MB error line is not)."""
    text = " ".join(text.split()) if len(text) <= 4 * limit else " ".join(text[: 4 * limit].split())
    if len(text) <= limit:
        return text
    tail = f" … [cut at {limit} chars]"
    return text[: limit - len(tail)].rstrip() + tail
