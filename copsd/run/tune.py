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
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd

from copsd.config import JobConfig
from copsd.errors import CopsdError, SpecError, one_line
from copsd.redact import display_url, shorten
from copsd.results.db import ResultsDB
from copsd.results.schema import DONE, FAILED, METRIC_COLUMNS, RUNNING
from copsd.run.execute import SKIPPED, JobHooks, execute_one
from copsd.run.mlflow_sink import SweepTracking, tag_run
from copsd.run.options import RunOptions, make_tracker
from copsd.run.recorder import NotesSaid
from copsd.run.signals import SweepInterrupted, Terminated, signals_return_jobs
from copsd.spec import SearchSettings, SweepSpec, expand, filter_jobs, with_values


class JobPruned(CopsdError):
    """Raised from a checkpoint callback: the runner records the job FAILED with this reason."""


class _TrialInterrupted(Exception):  # noqa: N818 - an Exception, so Optuna marks the trial FAIL, then re-raises it
    """SIGTERM/SIGINT inside a trial, re-raised as an Exception so that Optuna marks the trial FAIL
    (it lets a BaseException through and leaves the trial RUNNING)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# user attributes copsd sets on a trial
ERROR_ATTR = "copsd.error"  # why a failed trial failed (one line)
INTERRUPTED_ATTR = "copsd.interrupted"  # a trial stopped by a signal: FAIL, not counted, queued again
RETRY_OF_ATTR = "copsd.retry_of"  # the number of the interrupted trial a queued trial repeats


@dataclass
class TuneSummary:
    study: str
    finished: int  # trials COMPLETE or PRUNED in the study (all workers)
    best_value: float | None
    best_params: dict[str, Any]
    failed: int = 0  # failed trials in the study that count toward n_trials (all workers)
    error: str | None = None  # set when the study stopped because its trials failed: exit 1 with this line


class _QuietFailedTrials(logging.Filter):
    """Optuna logs every failed trial as a warning with its parameters and a traceback (20+ lines a
    trial); copsd prints one line per failed trial itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Trial ") and " failed with " in msg)


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    quiet = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _QuietFailedTrials) for f in quiet.filters):
        quiet.addFilter(_QuietFailedTrials())
    return optuna


def check_search(spec: SweepSpec, where: str) -> SearchSettings:
    """The search block, with every field path and metric checked before anything runs."""
    search = spec.search
    if search is None:
        raise SpecError(f"{where}: no 'search:' block; `copsd tune` needs one (see sweeps/tune-demo.yaml)")
    if search.objective.metric not in METRIC_COLUMNS:
        raise SpecError(
            f"{where}: field 'search.objective.metric': unknown metric '{search.objective.metric}'; "
            f"choose from: {', '.join(METRIC_COLUMNS)}"
        )
    examples = {k: p.example() for k, p in search.params.items()}
    jobs = expand(with_values(spec, examples), where)
    for name, space in search.params.items():  # each end of a range, each choice: a job field it may take
        values = space.choices if space.type == "categorical" else [space.low, space.high]
        for value in (values or [])[1:]:
            if space.type == "int":
                value = int(value)  # type: ignore[arg-type]  # an int range: low and high are set
            try:
                expand(with_values(spec, {**examples, name: value}), where)
            except SpecError as exc:
                why = str(exc).removeprefix(where).lstrip(": ")  # "(job ...): field '...': what is wrong"
                raise SpecError(f"{where}: field 'search.params.{name}': the value {shorten(repr(value), 80)} "
                                f"does not fit the job {why}") from None  # fmt: skip
    langs = search.objective.languages
    if langs and not {j.language for j in jobs} & set(langs):
        raise SpecError(f"{where}: field 'search.objective.languages': no job of the spec is in {', '.join(langs)}")
    return search


def storage(url: str):
    """Optuna's RDB storage on the results DB; a trial whose process stops beating for 2 minutes
    is failed and re-queued once (`RetryHeartbeatStaleTrialCallback`)."""
    optuna = _optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    for attempt in range(20):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=30,
                grace_period=120,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except Exception as exc:  # noqa: BLE001 - processes starting together race to create Optuna's tables
            text = str(exc).lower()
            if attempt == 19 or not any(w in text for w in ("already exists", "duplicate", "locked", "unique")):
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def read_storage(url: str):
    """Optuna's storage on an existing results DB, opened read-only (as `ResultsDB(readonly=True)`
    opens it: SQLite `mode=ro`, PostgreSQL read-only transactions); None when the DB has no Optuna
    tables. Never creates them, nor anything else: `copsd report tune` leaves the file as it was."""
    optuna = _optuna()
    import sqlalchemy

    from copsd.paths import sqlite_path

    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return None  # connecting would create the file
    rdb = ResultsDB(url, readonly=True)  # one line for a file that is not a DB, a newer schema, ...
    try:
        with rdb.engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
        ro_url = rdb.engine.url.render_as_string(hide_password=False)
    finally:
        rdb.close()
    if not {"studies", "trials", "version_info", "alembic_version"} <= tables:
        return None
    if path is not None:  # the same read-only (or immutable) file URL the results DB opened
        return optuna.storages.RDBStorage(ro_url, skip_table_creation=True)
    kwargs = {"connect_args": {"options": "-c default_transaction_read_only=on"}} if url.startswith("postgres") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True)


def _load_for_reading(url: str, study: str):
    optuna = _optuna()
    store = read_storage(url)
    names = [s.study_name for s in store.get_all_studies()] if store is not None else []
    if study not in names:
        known = ", ".join(sorted(names)) or "none"
        raise CopsdError(f"no study named '{study}' in {display_url(url)}; known: {known}")
    return optuna.load_study(study_name=study, storage=store)


def sampler_seed(search: SearchSettings, worker: int = 0, trials_so_far: int = 0) -> int:
    """Each process sharing a study needs its own seed (`worker`), or they would all propose the
    same values; and so does each run of a resumed or extended study (`trials_so_far`), or it would
    propose its first trials' values again. A new study keeps the plain seed (worker 0: the spec's);
    later runs hash (seed, worker, trials so far): neighbouring Mersenne-Twister seeds start with
    nearly equal draws (seeds 0 and 3 propose lr 1.252e-4 and 1.264e-4)."""
    if trials_so_far == 0:
        return (search.seed + 1_000_003 * worker) % 2**32
    import numpy as np

    return int(np.random.SeedSequence([search.seed, worker, trials_so_far]).generate_state(1)[0])


def _sampler(search: SearchSettings, worker: int = 0, trials_so_far: int = 0):
    """The spec's sampler, seeded by `sampler_seed`."""
    optuna = _optuna()
    seed = sampler_seed(search, worker, trials_so_far)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, search.n_startup_trials))


def worker_index(given: int | None) -> int:
    """This process's index among those sharing a study: --worker, else the SLURM array index."""
    if given is not None:
        if given < 0:
            raise CopsdError(f"--worker must be 0 or more, not {given}")
        return given
    raw = os.environ.get("SLURM_ARRAY_TASK_ID", "0") or "0"
    if not raw.isdigit():
        raise CopsdError(f"SLURM_ARRAY_TASK_ID={shorten(raw, 40)} is not a task index; pass --worker N")
    return int(raw)


def _pruner(search: SearchSettings):
    optuna = _optuna()
    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    if search.pruner == "threshold":
        side = "lower" if search.objective.direction == "maximize" else "upper"
        return optuna.pruners.ThresholdPruner(**{side: search.threshold})
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=search.n_startup_trials)


def _suggest(trial, name: str, space) -> Any:
    if space.type == "categorical":
        return trial.suggest_categorical(name, space.choices)
    if space.type == "int":
        return trial.suggest_int(name, int(space.low), int(space.high), step=int(space.step or 1), log=space.log)
    return trial.suggest_float(name, space.low, space.high, step=space.step, log=space.log)


def objective_value(df: pd.DataFrame, search: SearchSettings) -> float | None:
    """The mean over the trial's jobs (in the objective's languages) of the metric at each job's
    final checkpoint or its best one, at the full decoding budget; None without results."""
    from copsd.reports.tables import at_full_budget

    o = search.objective
    if o.languages:
        df = df[df.language.isin(o.languages)]
    df = at_full_budget(df)
    if df.empty:
        return None
    if o.step == "final":
        per_job = df[df.step == df.groupby("job_id").step.transform("max")].groupby("job_id")[o.metric].mean()
    else:
        agg = "max" if o.direction == "maximize" else "min"
        per_job = df.groupby(["job_id", "step"])[o.metric].mean().groupby("job_id").agg(agg)
    return float(per_job.mean())


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
    optuna = _optuna()
    from optuna.trial import TrialState

    total = n_trials or search.n_trials
    tracker = make_tracker(opts)
    db = ResultsDB(opts.db_url)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage(db.url),
        direction=search.objective.direction,
        sampler=_sampler(search, worker),
        pruner=_pruner(search),
        load_if_exists=True,
    )
    # a resumed or extended study goes on with the sampler's sequence instead of starting it again
    study.sampler = _sampler(search, worker, len(study.get_trials(deepcopy=False)))
    sw = db.get_sweep(spec.name)
    sweep_run = SweepTracking(tracker)
    sweep_run.open(spec.name, sw.mlflow_run_id if sw else None, spec.description)
    parent: str | None = None
    current: list[int] = []  # the trial this process is running (its id), for a signal between trials' steps
    notes = NotesSaid()  # said once by this process, not once per trial

    def run_trial(trial) -> float:
        nonlocal parent
        values = {name: _suggest(trial, name, space) for name, space in search.params.items()}
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


def trials_frame(url: str, study: str) -> pd.DataFrame:
    """The study's trials (number, state, value, params, job ids), best first."""
    optuna = _optuna()
    s = _load_for_reading(url, study)
    rows = []
    for t in s.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "last_step": t.last_step,
                **{f"param:{k}": v for k, v in t.params.items()},
                "jobs": ",".join(t.user_attrs.get("job_ids", [])),
                "why": _why(t),
            }
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if not df.why.any():
        df = df.drop(columns="why")
    asc = s.direction == optuna.study.StudyDirection.MINIMIZE
    return df.sort_values("value", ascending=asc, na_position="last").reset_index(drop=True)


def _why(t) -> str:
    """A failed trial's reason, cut for a table cell ('' for the others)."""
    if INTERRUPTED_ATTR in t.user_attrs:
        return f"interrupted ({t.user_attrs[INTERRUPTED_ATTR]}), queued again"
    return shorten(t.user_attrs.get(ERROR_ATTR, ""), 120)


def tune_figures(url: str, study: str, out_dir) -> dict[str, str]:
    """Optimisation history and parameter importances (PNG), or why one was skipped."""
    import matplotlib
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    from copsd.reports.figure_style import PLAIN_TEXT, pyplot, save_figure

    plt = pyplot()  # the file-only backend, before optuna draws
    s = _load_for_reading(url, study)
    complete = len(s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    for name, draw, need in (
        ("history", ovm.plot_optimization_history, 1),
        ("importance", ovm.plot_param_importances, 2),
    ):
        path = out_dir / f"{study}_tune_{name}.png"
        if complete < need:  # Optuna would warn and draw an empty plot
            done[name] = f"skipped: {complete} complete trial(s), {need} needed"
            continue
        try:
            # a `$` in a study or parameter name is not mathtext
            with warnings.catch_warnings(), matplotlib.rc_context(PLAIN_TEXT):
                warnings.simplefilter("ignore")
                draw(s)
            fig = plt.gcf()  # optuna draws on a new current figure
            fig.set_size_inches(6.4, 4.0)
            save_figure(fig, path, pdf=False)  # plain text like every copsd figure
            done[name] = str(path)
        except (ValueError, RuntimeError) as exc:  # e.g. fewer than two finished trials
            done[name] = f"skipped: {str(exc).splitlines()[0]}"
    return done
