"""Who holds a claim: an owner token per claim that says on which host and in which process it
was made, so a claim whose process is gone can be taken over at once instead of after the
heartbeat goes stale (`copsd.results.db.ResultsDB.claim` stores what `Claimant` says)."""

from __future__ import annotations

import os
import socket
import uuid

from copsd.results.db import Claimant


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def host_namespace() -> str:
    """This host, and its pid namespace: containers that share a hostname do not share pids."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{socket.gethostname()}/{ns}"


def scheduler_task() -> str | None:
    """The SLURM job (`slurm:<array job>_<task>` or `slurm:<job>`) or submitit local job this
    process runs in, if any."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if job and task:
        return f"slurm:{job}_{task}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}"
    if os.environ.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"submitit-local:{os.environ['SUBMITIT_LOCAL_JOB_ID']}"
    return None


def host_label() -> str:
    """The host a claim is made on, with the scheduler task holding it when there is one:
    `copsd sweep status` shows it for RUNNING jobs."""
    task = scheduler_task()
    return f"{socket.gethostname()} {task}" if task else socket.gethostname()


def new_owner_token() -> str:
    """host/pid-namespace|pid|process start|random: unique per claim, and says whether its process is alive."""
    return f"{host_namespace()}|{os.getpid()}|{process_start(os.getpid()) or '-'}|{uuid.uuid4().hex[:12]}"


def owner_is_dead_here(owner: str | None) -> bool:
    """True only when the owner ran on this host and its process is gone (or the pid was reused)."""
    if not owner or owner.count("|") != 3:
        return False
    host, pid_s, start, _ = owner.split("|")
    if host != host_namespace() or not pid_s.isdigit():
        return False
    pid = int(pid_s)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    now_start = process_start(pid)
    return start != "-" and now_start is not None and now_start != start


def this_process() -> Claimant:
    """The claimant a runner in this process claims jobs as (a new token per claim)."""
    return Claimant(token=new_owner_token(), host=host_label(), pid=os.getpid(), orphaned=owner_is_dead_here)
