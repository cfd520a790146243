"""What runs in one worker task of `copsd sweep submit`: `SweepWorker` (picklable; submitit sends it
to the task and calls it), the DB URL it connects to, and its SIGUSR2 handling.

Apart from `copsd.run.submit` (the submitting side: options, checks, the executor, the record of
submitted tasks) because this code runs on the cluster's node, in the task, after submission.

Signals (what SLURM does at a time limit, at preemption and at `scancel`):

- SIGUSR2 (`sbatch --signal=USR2@<signal_delay_s>`: sent that long before the time limit, and at
  preemption where the cluster sets `PreemptParameters=send_user_signal`) is submitit's
  "checkpoint and requeue" signal. The task turns it into copsd's SIGTERM path first: the running
  job goes back to PENDING (its adapter checkpoints stay in runs/<job id>/), then submitit's own
  handler requeues the task (`scontrol requeue <array job>_<task>`). The job resumes from its last
  checkpoint in whichever task claims it next (another running task at once, or this one when it
  starts again).
- SIGTERM (`scancel`, preemption without the user signal, the time limit itself) is copsd's
  usual handling: the running job goes back to PENDING and the task exits (143); SLURM requeues the
  task itself where the cluster's PreemptMode is REQUEUE. Other tasks take the job over.

The job processes (`runner.isolate`) ignore SIGUSR2: SLURM signals every process of the step, and
only the task's main process may decide what it means.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from copsd.errors import CopsdError
from copsd.redact import MASK, display_url


class SweepWorker:
    """One worker task: `run_sweep` over the sweep's jobs against the shared results DB.

    Picklable (submitit sends it to the task). `checkpoint()` makes it requeueable by submitit:
    the requeued task runs the same worker again; the DB says what is left and the jobs'
    checkpoints say where each one stands."""

    def __init__(
        self,
        name: str,
        job_jsons: list[str],
        all_job_jsons: list[str],
        run_opts: Any,  # copsd.run.sweep.RunOptions
        description: str = "",
        spec_path: str | None = None,
        spec_yaml: str | None = None,
    ) -> None:
        self.name = name
        self.job_jsons = job_jsons
        self.all_job_jsons = all_job_jsons
        self.run_opts = run_opts
        self.description = description
        self.spec_path = spec_path
        self.spec_yaml = spec_yaml

    def __call__(self, task: int, tasks: int) -> dict[str, Any]:
        from dataclasses import replace

        from copsd.config import JobConfig
        from copsd.run.sweep import SweepInterrupted, run_sweep

        jobs = [JobConfig.model_validate_json(js) for js in self.job_jsons]
        all_jobs = [JobConfig.model_validate_json(js) for js in self.all_job_jsons]
        # every task walks the whole list, rotated so that they start apart; claims make it exactly-once
        order = jobs[task::tasks] + [j for i, j in enumerate(jobs) if i % tasks != task]
        opts = replace(self.run_opts, workers=1, progress=False, db_url=_task_db_url(self.run_opts.db_url))
        label = _task_label()
        print(
            f"copsd worker {label}: sweep '{self.name}', {len(jobs)} job(s), results in {display_url(opts.db_url)}",
            flush=True,
        )
        requeue = _UserSignal()
        with requeue.installed(isolate=opts.isolate):
            try:
                summary = run_sweep(
                    self.name,
                    order,
                    opts,
                    all_jobs=all_jobs,
                    description=self.description,
                    spec_path=self.spec_path,
                    spec_yaml=self.spec_yaml,
                )
            except SweepInterrupted as exc:
                print(f"copsd worker {label}: {exc}", flush=True)
                if requeue.received:  # submitit's handler: checkpoint, `scontrol requeue`, exit
                    requeue.hand_to_submitit()
                raise SystemExit(128 + exc.signum) from None
        out = {"task": label, "done": summary.done, "failed": summary.failed, "skipped": summary.skipped}
        print(f"copsd worker {label}: finished: {out}", flush=True)
        return out

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on its requeue signal: run the same worker again when requeued."""
        from submitit.core.utils import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _task_db_url(shown: str) -> str:
    """The DB URL a task connects to. A URL with a password was submitted masked (submitit pickles
    the worker into its folder, readable by others); the real one comes from the task's
    environment, which SLURM and submitit's local executor pass on from the submitting shell."""
    if MASK not in shown:
        return shown
    real = os.environ.get("COPSD_DB", "")
    if display_url(real) != shown:
        raise CopsdError(
            f"the results DB {shown} has a password, which reaches a task only through COPSD_DB in its "
            "environment, and this task's COPSD_DB does not match; submit without --export=NONE (sbatch's "
            "default passes the environment on)"
        )
    return real


def _task_label() -> str:
    from copsd.run.identity import scheduler_task

    return scheduler_task() or f"pid {os.getpid()}"


class _UserSignal:
    """SIGUSR2 in a worker task: the running job goes back to PENDING (copsd's SIGTERM path) and
    then submitit's own handler, which was installed before the task started, requeues the task."""

    def __init__(self) -> None:
        self.received = False
        self._submitit_handler: Any = None

    def _handler(self, signum, _frame) -> None:
        if self.received:
            return
        self.received = True
        print(f"copsd worker {_task_label()}: SIGUSR2 (time limit or preemption): giving the job back", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # copsd's handler: Terminated -> job PENDING -> SweepInterrupted

    def installed(self, isolate: bool):
        import contextlib

        @contextlib.contextmanager
        def cm():
            self._submitit_handler = signal.getsignal(signal.SIGUSR2)
            if isolate:
                # job processes are forked by a fork server started now, with SIGUSR2 ignored: the
                # disposition survives its exec and forks, so SLURM's signal to the whole step
                # does not kill a job before the task has given it back
                from copsd.run.isolate import warm_up

                signal.signal(signal.SIGUSR2, signal.SIG_IGN)
                warm_up()
            signal.signal(signal.SIGUSR2, self._handler)
            try:
                yield
            finally:
                signal.signal(signal.SIGUSR2, self._submitit_handler or signal.SIG_DFL)

        return cm()

    def hand_to_submitit(self) -> None:
        handler = self._submitit_handler
        if callable(handler):
            handler(signal.SIGUSR2, None)  # checkpoint() -> scontrol requeue -> sys.exit
