"""Real services and tools the tests use, installed by the test run itself where missing.

Debian packages are installed with apt-get when the tests run as root (CI and the development
machines do); elsewhere a test that needs one is skipped with the reason, never faked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache

import pytest


@cache
def _apt_updated() -> bool:
    return subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600).returncode == 0


def debian_tool(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian `package` first if needed (or skip with why not)."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{binary} missing and cannot install Debian '{package}' here (needs root and apt-get)")
    _apt_updated()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    found = shutil.which(binary)
    if not found:
        pytest.skip(f"installing Debian '{package}' failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return found


class PostgresServer:
    """A throw-away PostgreSQL cluster: `initdb` in a temp dir, `pg_ctl start` listening on a
    unix socket only (no TCP port), run as the `postgres` system user (initdb refuses root)."""

    def __init__(self, root) -> None:
        import glob

        if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
            debian_tool("pg_ctlcluster", "postgresql")  # skips with the reason if it cannot install
        self.bin = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.root = root
        self.data, self.sock = root / "data", root / "sock"
        self.sock.mkdir(parents=True)
        os.chmod(root, 0o777)
        os.chmod(self.sock, 0o777)
        self._counter = 0

    def _as_postgres(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout)

    def start(self) -> PostgresServer:
        r = self._as_postgres(f"{self.bin}/initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        if r.returncode != 0:
            pytest.skip(f"initdb failed: {r.stderr.strip()[-300:]}")
        opts = f"-k {self.sock} -c listen_addresses='' -c fsync=off -c max_connections=200"
        r = self._as_postgres(
            f"{self.bin}/pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"
        )
        if r.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {log[-500:]}")
        return self

    def stop(self) -> None:
        self._as_postgres(f"{self.bin}/pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")

    def new_database(self) -> str:
        """A fresh, empty database on the server, as a SQLAlchemy URL (psycopg 3 driver)."""
        import psycopg

        self._counter += 1
        name = f"copsd_{os.getpid()}_{self._counter}"
        with psycopg.connect(host=str(self.sock), user="postgres", dbname="postgres", autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@/{name}?host={self.sock}"
