"""`copsd tune`: hyperparameter search with Optuna over any dotted job field.

A trial = the spec's jobs with the trial's values fixed (`spec.with_values`): ordinary hashed jobs,
claimed, trained, evaluated and logged by the sweep runner's `execute_one`, stored in the results
DB under the spec's name (so `copsd report table --sweep NAME` compares trials) and in MLflow
(tagged `copsd.trial`). The objective is read back from the results DB. The study lives in the
same database URL through Optuna's RDB storage, so a rerun resumes it and several processes (or
SLURM tasks) can share it; trials whose process died are failed by Optuna's heartbeat and retried.
Each evaluated checkpoint of a one-job trial is reported to the pruner, which may stop the trial:
its job is then FAILED with "pruned at step N".

A study always ends: a failed trial counts toward `n_trials` like a complete or pruned one, and a
process stops after `search.max_failures` failed trials in a row (exit 1, the first one's reason as
the summary line). SIGTERM/SIGINT stop the running trial like `copsd sweep run` stops a job: its job
goes back to PENDING, the trial is FAIL (tagged interrupted, not counted) and queued again with the
same values, so a rerun resumes it. The sampler's seed depends on the trials already in the study,
so a resumed or extended study goes on with new values instead of proposing the first ones again.

This file is the study loop; the study's ingredients (search block, sampler, pruner, storage) are in
`tune_space.py`, the reading side (objective value, `copsd report tune`) in `tune_report.py`.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from copsd.config import JobConfig
from copsd.errors import CopsdError, one_line
from copsd.redact import shorten
from copsd.results.db import ResultsDB
from copsd.results.schema import DONE, FAILED, RUNNING
from copsd.run.execute import SKIPPED, JobHooks, execute_one
from copsd.run.mlflow_sink import SweepTracking, tag_run
from copsd.run.options import RunOptions, make_tracker
from copsd.run.recorder import NotesSaid
from copsd.run.signals import SweepInterrupted, Terminated, signals_return_jobs
from copsd.run.tune_report import objective_value
from copsd.run.tune_space import (
    ERROR_ATTR,
    INTERRUPTED_ATTR,
    RETRY_OF_ATTR,
    check_search,
    import_optuna,
    make_pruner,
    make_sampler,
    storage,
    suggest,
    worker_index,
)
from copsd.spec import SweepSpec, expand, filter_jobs, with_values


class JobPruned(CopsdError):
    """Raised from a checkpoint callback: the runner records the job FAILED with this reason."""


class _TrialInterrupted(Exception):  # noqa: N818 - an Exception, so Optuna marks the trial FAIL, then re-raises it
    """SIGTERM/SIGINT inside a trial, re-raised as an Exception so that Optuna marks the trial FAIL
    (it lets a BaseException through and leaves the trial RUNNING)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class TuneSummary:
    study: str
    finished: int  # trials COMPLETE or PRUNED in the study (all workers)
    best_value: float | None
    best_params: dict[str, Any]
    failed: int = 0  # failed trials in the study that count toward n_trials (all workers)
    error: str | None = None  # set when the study stopped because its trials failed: exit 1 with this line


def run_tune(
    spec: SweepSpec,
    opts: RunOptions,
    *,
    where: str,
    only: list[str] | None = None,
    n_trials: int | None = None,
    worker: int | None = None,
    say: Callable[[str], None] = print,
) -> TuneSummary:
    """Run trials until `n_trials` trials of the study have ended (complete, pruned or failed), or
    until `search.max_failures` of this process's trials failed in a row (`TuneSummary.error`)."""
    search = check_search(spec, where)
    if n_trials is not None and n_trials < 1:
        raise CopsdError(f"--n-trials must be at least 1, not {n_trials}")
    worker = worker_index(worker)
    optuna = import_optuna()
    from optuna.trial import TrialState

    total = n_trials or search.n_trials
    tracker = make_tracker(opts)
    db = ResultsDB(opts.db_url)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage(db.url),
        direction=search.objective.direction,
        sampler=make_sampler(search, worker),
        pruner=make_pruner(search),
        load_if_exists=True,
    )
    # a resumed or extended study goes on with the sampler's sequence instead of starting it again
    study.sampler = make_sampler(search, worker, len(study.get_trials(deepcopy=False)))
    sw = db.get_sweep(spec.name)
    sweep_run = SweepTracking(tracker)
    sweep_run.open(spec.name, sw.mlflow_run_id if sw else None, spec.description)
    parent: str | None = None
    current: list[int] = []  # the trial this process is running (its id), for a signal between trials' steps
    notes = NotesSaid()  # said once by this process, not once per trial

    def run_trial(trial) -> float:
        nonlocal parent
        values = {name: suggest(trial, name, space) for name, space in search.params.items()}
        jobs = expand(with_values(spec, values), where)
        if only:
            jobs = filter_jobs(jobs, only)
        db.register_sweep(spec.name, jobs, description=spec.description, spec_path=where)
        if parent is None and sweep_run.run_id:
            parent = db.set_sweep_mlflow_run(spec.name, sweep_run.run_id, only_if_unset=True)
        trial.set_user_attr("job_ids", [j.job_id for j in jobs])
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        say(shorten(f"trial {trial.number}: {shown} ({len(jobs)} job(s))"))
        report = len(jobs) == 1  # per-checkpoint values are comparable across trials with one job
        pruned: list[int] = []

        def on_result(job: JobConfig, step: int, metrics: dict[str, float]) -> None:
            o = search.objective
            if not report or (o.languages and job.language not in o.languages):
                return
            trial.report(float(metrics[o.metric]), step)
            if trial.should_prune():
                pruned.append(step)
                raise JobPruned(
                    f"pruned at step {step} by the {search.pruner} pruner ({o.metric} {metrics[o.metric]:.4g})"
                )

        for job in jobs:
            while True:  # the same values in another process's trial: wait for its job (or take it over)
                # the pruner hears each checkpoint from the recorder, in this process; the job runs
                # in its own (runner.isolate), like every job
                hooks = JobHooks(notes=notes, on_checkpoint=[partial(on_result, job)])
                outcome = execute_one(
                    job, db, opts, tracker=tracker, parent_run_id=parent, sweep=spec.name, hooks=hooks
                )
                row = db.get_job(job.job_id)
                if not (outcome.outcome == SKIPPED and row is not None and row.status == RUNNING):
                    break
                time.sleep(2.0)
            tag_run(tracker, row.mlflow_run_id if row else None, "copsd.trial", str(trial.number))
            if pruned:
                say(outcome.line(job))
                raise optuna.TrialPruned(f"pruned at step {pruned[0]}")
            if row is None or row.status != DONE:  # the trial's failure line says why (after_trial)
                status = row.status if row else "missing"
                err = row.last_error if row is not None and row.status == FAILED else "not finished"
                raise CopsdError(f"job {job.job_id} ({job.label}) is {status}: {err}")
            if outcome.outcome != SKIPPED:
                say(outcome.line(job))
        value = objective_value(db.results_frame(spec.name)[lambda d: d.job_id.isin([j.job_id for j in jobs])], search)
        if value is None:
            raise CopsdError("no results in the objective's languages")
        say(f"trial {trial.number}: {search.objective.metric} = {value:.4f}")
        return value

    def objective(trial) -> float:
        current[:] = [trial._trial_id]
        try:
            return run_trial(trial)
        except (KeyboardInterrupt, Terminated) as exc:
            signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
            trial.set_user_attr(INTERRUPTED_ATTR, signal.Signals(signum).name)
            raise _TrialInterrupted(signum) from None  # Optuna marks the trial FAIL and raises it again
        except CopsdError as exc:
            trial.set_user_attr(ERROR_ATTR, one_line(exc))
            raise

    streak: list[Any] = []  # this process's failed trials since its last complete or pruned one
    ran: list[Any] = []  # this process's ended trials
    stopped: list[str] = []

    def after_trial(study, t) -> None:
        ran.append(t)
        if t.state == TrialState.FAIL:
            streak.append(t)
            reason = t.user_attrs.get(ERROR_ATTR, "no reason recorded")
            say(shorten(f"trial {t.number} failed ({len(streak)} in a row): {reason}"))
        else:
            streak.clear()
        if len(streak) >= search.max_failures:
            stopped.append(
                f"tune '{spec.name}' stopped: {len(streak)} trials in a row failed (search.max_failures: "
                f"{search.max_failures}); the first, trial {streak[0].number}: "
                f"{streak[0].user_attrs.get(ERROR_ATTR, 'no reason recorded')}"
            )
            study.stop()
        elif _ended(study.get_trials(deepcopy=False), TrialState) >= total:
            study.stop()

    done_before = _ended(study.get_trials(deepcopy=False), TrialState)
    t0 = time.perf_counter()
    try:
        with signals_return_jobs():
            if done_before < total:
                study.optimize(objective, callbacks=[after_trial], catch=(CopsdError,), gc_after_trial=True)
    except (KeyboardInterrupt, Terminated, _TrialInterrupted) as exc:
        signum = (
            exc.signum
            if isinstance(exc, _TrialInterrupted)
            else signal.SIGTERM
            if isinstance(exc, Terminated)
            else signal.SIGINT
        )
        try:
            again = _settle_interrupted(study, current, signum)
        except Exception:  # noqa: BLE001 - best effort: Optuna's heartbeat fails the trial later anyway
            again = None
        sweep_run.close("KILLED")
        db.close()
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        running = (
            f"trial {again} was stopped (FAIL, not counted; queued again) and its job returned to PENDING"
            if again is not None
            else "no trial was left running"
        )
        raise SweepInterrupted(
            f"{what}: {len(ran)} trial(s) of study '{spec.name}' ended in this run, {running}; "
            "run the same command again to resume",
            signum,
        ) from None
    trials = study.get_trials(deepcopy=False)
    finished = len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)])
    failed = _counted_failures(trials, TrialState)
    logging.getLogger("copsd").info("tune %s: %d trial(s) in %.0fs", spec.name, len(ran), time.perf_counter() - t0)
    sweep_run.close("FINISHED")
    db.close()
    error = stopped[0] if stopped else None
    if error is None and failed and not finished:  # the budget is spent and no trial has succeeded
        first = failed[0]
        error = (
            f"tune '{spec.name}': all {len(failed)} ended trial(s) failed; the first, trial {first.number}: "
            f"{first.user_attrs.get(ERROR_ATTR, 'no reason recorded')}"
        )
    try:
        best = study.best_trial
        best_value, best_params = best.value, best.params
    except ValueError:  # no completed trial yet
        best_value, best_params = None, {}
    return TuneSummary(spec.name, finished, best_value, best_params, len(failed), shorten(error) if error else None)


def _counted_failures(trials, TrialState) -> list:  # noqa: N803 - optuna's enum, imported lazily
    """Failed trials that count toward `n_trials`: not those a signal stopped (queued again) nor
    those Optuna's heartbeat re-queued (a process that died), in trial order."""
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    return [
        t
        for t in sorted(trials, key=lambda t: t.number)
        if t.state == TrialState.FAIL and INTERRUPTED_ATTR not in t.user_attrs and t.number not in retried
    ]


def _ended(trials, TrialState) -> int:  # noqa: N803
    """Trials that count toward `n_trials`: complete, pruned, or failed (see `_counted_failures`)."""
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return done + len(_counted_failures(trials, TrialState))


def _settle_interrupted(study, current: list[int], signum: int) -> int | None:
    """After a signal: this process's trial FAIL (if Optuna left it RUNNING), tagged interrupted,
    and its values queued again so that the next run (or another worker) repeats it; its number."""
    from optuna.trial import TrialState

    if not current:
        return None
    storage = study._storage
    t = storage.get_trial(current[0])
    if t.state == TrialState.RUNNING:
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, signal.Signals(signum).name)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        t = storage.get_trial(current[0])
    if t.state != TrialState.FAIL or INTERRUPTED_ATTR not in t.user_attrs:
        return None  # it ended before the signal (complete, pruned or failed on its own)
    if t.params:
        study.enqueue_trial(t.params, user_attrs={RETRY_OF_ATTR: t.number})
    return t.number
