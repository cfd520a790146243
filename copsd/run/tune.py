"""`copsd tune`: hyperparameter search with Optuna over any dotted job field.

A trial = the spec's jobs with the trial's values fixed (`spec.with_values`): ordinary hashed jobs,
claimed, trained, evaluated and logged by the sweep runner's `execute_one`, stored in the results
DB under the spec's name (so `copsd report table --sweep NAME` compares trials) and in MLflow
(tagged `copsd.trial`). The objective is read back from the results DB. The study lives in the
same database URL through Optuna's RDB storage, so a rerun resumes it and several processes (or
SLURM tasks) can share it; trials whose process died are failed by Optuna's heartbeat and retried.
Each evaluated checkpoint of a one-job trial is reported to the pruner, which may stop the trial:
its job is then FAILED with "pruned at step N".
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from copsd.config import JobConfig
from copsd.errors import CopsdError, SpecError
from copsd.results.db import ResultsDB
from copsd.results.schema import DONE, FAILED, METRIC_COLUMNS, RUNNING
from copsd.run.sweep import RunOptions, Terminated, execute_one, make_tracker, signals_return_jobs
from copsd.spec import SearchSettings, SweepSpec, expand, filter_jobs, with_values


class JobPruned(CopsdError):
    """Raised from a checkpoint callback: the runner records the job FAILED with this reason."""


@dataclass
class TuneSummary:
    study: str
    finished: int  # trials COMPLETE or PRUNED in the study (all workers)
    best_value: float | None
    best_params: dict[str, Any]


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
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
    jobs = expand(with_values(spec, {k: p.example() for k, p in search.params.items()}), where)
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


def _sampler(search: SearchSettings, worker: int = 0):
    """The spec's sampler; each process sharing a study needs its own seed (`worker`), or they
    would all propose the same values."""
    optuna = _optuna()
    seed = search.seed + 1_000_003 * worker
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, search.n_startup_trials))


def worker_index(given: int | None) -> int:
    """This process's index among those sharing a study: --worker, else the SLURM array index."""
    if given is not None:
        return given
    return int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)


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
    """Run trials until the study holds `n_trials` finished (COMPLETE or PRUNED) ones."""
    search = check_search(spec, where)
    optuna = _optuna()
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    total = n_trials or search.n_trials
    opts = replace(opts, isolate=False)  # the pruner's callback runs inside the job (docs/cluster.md)
    tracker = make_tracker(opts)
    db = ResultsDB(opts.db_url)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage(db.url),
        direction=search.objective.direction,
        sampler=_sampler(search, worker_index(worker)),
        pruner=_pruner(search),
        load_if_exists=True,
    )
    sw = db.get_sweep(spec.name)
    sweep_run = tracker.sweep_run(spec.name, sw.mlflow_run_id if sw else None, spec.description)
    parent: str | None = None

    def objective(trial) -> float:
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
        say(f"trial {trial.number}: {shown} ({len(jobs)} job(s))")
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
                outcome = execute_one(
                    job,
                    db,
                    opts,
                    tracker=tracker,
                    parent_run_id=parent,
                    sweep=spec.name,
                    on_result=lambda step, m, job=job: on_result(job, step, m),
                )
                row = db.get_job(job.job_id)
                if not (outcome.status == "SKIPPED" and row is not None and row.status == RUNNING):
                    break
                time.sleep(2.0)
            _tag_run(tracker, row.mlflow_run_id if row else None, trial.number)
            if outcome.status not in ("SKIPPED",):
                say(outcome.line(job))
            if pruned:
                raise optuna.TrialPruned(f"pruned at step {pruned[0]}")
            if row is None or row.status != DONE:
                status = row.status if row else "missing"
                err = row.last_error if row is not None and row.status == FAILED else "not finished"
                raise CopsdError(f"trial {trial.number}: job {job.job_id} is {status}: {err}")
        value = objective_value(db.results_frame(spec.name)[lambda d: d.job_id.isin([j.job_id for j in jobs])], search)
        if value is None:
            raise CopsdError(f"trial {trial.number}: no results in the objective's languages")
        say(f"trial {trial.number}: {search.objective.metric} = {value:.4f}")
        return value

    states = (TrialState.COMPLETE, TrialState.PRUNED)
    done_before = len(study.get_trials(deepcopy=False, states=states))
    t0 = time.perf_counter()
    try:
        with signals_return_jobs():
            if done_before < total:
                study.optimize(
                    objective,
                    callbacks=[MaxTrialsCallback(total, states=states)],
                    catch=(CopsdError,),
                    gc_after_trial=True,
                )
    except (KeyboardInterrupt, Terminated):
        sweep_run.end("KILLED")
        db.close()
        raise
    finished = len(study.get_trials(deepcopy=False, states=states))
    logging.getLogger("copsd").info(
        "tune %s: %d trial(s) in %.0fs", spec.name, finished - done_before, time.perf_counter() - t0
    )
    sweep_run.end("FINISHED")
    db.close()
    try:
        best = study.best_trial
        return TuneSummary(spec.name, finished, best.value, best.params)
    except ValueError:  # no completed trial yet
        return TuneSummary(spec.name, finished, None, {})


def _tag_run(tracker, run_id: str | None, number: int) -> None:
    client = getattr(tracker, "client", None)
    if client is not None and run_id:
        try:
            client.set_tag(run_id, "copsd.trial", str(number))
        except Exception:  # noqa: BLE001 - a tag never fails a trial
            pass


def trials_frame(url: str, study: str) -> pd.DataFrame:
    """The study's trials (number, state, value, params, job ids), best first."""
    optuna = _optuna()
    try:
        s = optuna.load_study(study_name=study, storage=storage(url))
    except KeyError:
        names = [x.study_name for x in optuna.get_all_study_summaries(storage(url))]
        raise CopsdError(f"no study named '{study}' in {url}; known: {', '.join(names) or 'none'}") from None
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
            }
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    asc = s.direction == optuna.study.StudyDirection.MINIMIZE
    return df.sort_values("value", ascending=asc, na_position="last").reset_index(drop=True)


def tune_figures(url: str, study: str, out_dir) -> dict[str, str]:
    """Optimisation history and parameter importances (PNG), or why one was skipped."""
    optuna = _optuna()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    s = optuna.load_study(study_name=study, storage=storage(url))
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    for name, draw in (("history", ovm.plot_optimization_history), ("importance", ovm.plot_param_importances)):
        path = out_dir / f"{study}_tune_{name}.png"
        try:
            draw(s)
            fig = plt.gcf()  # optuna draws on a new current figure
            fig.set_size_inches(6.4, 4.0)
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            done[name] = str(path)
        except (ValueError, RuntimeError) as exc:  # e.g. fewer than two finished trials
            done[name] = f"skipped: {str(exc).splitlines()[0]}"
    return done
