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


def add_password_user(server: PostgresServer, user: str, password: str) -> str:
    """A role that must give its password (scram-sha-256, enforced by a pg_hba line ahead of the
    cluster's trust lines), owning a fresh database: its SQLAlchemy URL, password included."""
    import psycopg

    server._counter += 1
    name = f"copsd_pw_{os.getpid()}_{server._counter}"
    with psycopg.connect(host=str(server.sock), user="postgres", dbname="postgres", autocommit=True) as con:
        con.execute(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'")
        con.execute(f'CREATE DATABASE "{name}" OWNER "{user}"')
    hba = server.data / "pg_hba.conf"
    hba.write_text(f"local all {user} scram-sha-256\n" + hba.read_text())
    server._as_postgres(f"{server.bin}/pg_ctl", "-D", str(server.data), "reload")
    return f"postgresql+psycopg://{user}:{password}@/{name}?host={server.sock}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """A real single-node SLURM: Debian `slurm-wlm` and `munge`, a temporary slurm.conf (this host
    as the one node, its real CPUs and memory; no cgroups, no accounting), `munged`, `slurmctld`
    and `slurmd` started as root in the background on free localhost ports. `env` is what a
    client (sbatch, squeue, submitit) needs: SLURM_CONF pointing at the temporary config."""

    PARTITION = "debug"

    def __init__(self, root) -> None:
        if os.geteuid() != 0:
            pytest.skip("a test SLURM needs root (slurmd runs jobs as their users)")
        for binary, package in (
            ("munged", "munge"),
            ("slurmctld", "slurmctld"),
            ("slurmd", "slurmd"),
            ("sbatch", "slurm-client"),
        ):
            if not shutil.which(binary):
                debian_tool(binary, "slurm-wlm" if package != "munge" else "munge")
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: list[subprocess.Popen] = []

    def _node_line(self) -> str:
        """`slurmd -C`: this host's real CPUs, sockets, cores and memory, as a NodeName line."""
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60).stdout
        line = next(x for x in out.splitlines() if x.startswith("NodeName="))
        return f"{line} NodeAddr=127.0.0.1 State=UNKNOWN"

    def _write_conf(self) -> None:
        import socket

        r = self.root
        for d in ("state", "spool", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        self.munge_socket = r / "munge" / "munge.socket"
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=copsdtest",
                    f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "SchedulerType=sched/builtin",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "MpiDefault=none",
                    "SwitchType=switch/none",
                    "ReturnToService=2",
                    "JobRequeue=1",
                    "KillWait=10",  # seconds between SIGTERM and SIGKILL at scancel/timeout
                    "MinJobAge=300",
                    "InactiveLimit=0",
                    "SlurmdTimeout=60",
                    self._node_line(),
                    f"PartitionName={self.PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _log_tail(self) -> str:
        tails = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            p = self.root / name
            if p.exists():
                tails.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(tails)

    def _daemon(self, *cmd: str) -> None:
        log = open(self.root / f"{os.path.basename(cmd[0])}.out", "w")  # noqa: SIM115 - open while it runs
        self._procs.append(subprocess.Popen(list(cmd), env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def start(self, timeout_s: float = 60) -> SlurmCluster:
        import time

        self._write_conf()
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self._daemon(
            shutil.which("munged") or "munged",
            "-F",  # foreground: we own the process
            "-f",  # allow a key/socket under a temp dir owned by root
            f"--key-file={key}",
            f"--socket={self.munge_socket}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            f"--log-file={self.root / 'munged.log'}",
        )
        deadline = time.time() + timeout_s
        while not self.munge_socket.exists():
            if time.time() > deadline or self._procs[0].poll() is not None:
                raise RuntimeError(f"munged did not start:\n{self._log_tail()}")
            time.sleep(0.1)
        self._daemon(shutil.which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(self.conf))
        self._daemon(shutil.which("slurmd") or "slurmd", "-D", "-f", str(self.conf))
        while True:
            r = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True, timeout=30
            )
            state = r.stdout.strip()
            if r.returncode == 0 and state in ("idle", "mix", "alloc"):
                return self
            dead = [p.args[0] for p in self._procs if p.poll() is not None]
            if dead or time.time() > deadline:
                self.stop()
                raise RuntimeError(
                    f"SLURM did not come up (sinfo: {state or r.stderr.strip()!r}; exited: {dead}):\n{self._log_tail()}"
                )
            time.sleep(0.5)

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A SLURM client command (squeue, scancel, scontrol, ...) against this cluster."""
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for p in reversed(self._procs):  # slurmd, slurmctld, then munged
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        self._procs.clear()
