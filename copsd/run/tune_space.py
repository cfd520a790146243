"""What a `copsd tune` study is made of, from the spec's `search:` block: the block checked before
anything runs, Optuna (imported quietly), its storage on the results DB, the sampler (seeded per
worker and per resumption), the pruner, the values each trial suggests, and the names of the
attributes copsd sets on a trial.

Apart from the study loop (`copsd.run.tune`) and from the reading side (`copsd.run.tune_report`),
which both use these.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

from copsd.errors import CopsdError, SpecError
from copsd.redact import shorten
from copsd.results.schema import METRIC_COLUMNS
from copsd.spec import SearchSettings, SweepSpec, expand, with_values

# user attributes copsd sets on a trial
ERROR_ATTR = "copsd.error"  # why a failed trial failed (one line)
INTERRUPTED_ATTR = "copsd.interrupted"  # a trial stopped by a signal: FAIL, not counted, queued again
RETRY_OF_ATTR = "copsd.retry_of"  # the number of the interrupted trial a queued trial repeats


class _QuietFailedTrials(logging.Filter):
    """Optuna logs every failed trial as a warning with its parameters and a traceback (20+ lines a
    trial); copsd prints one line per failed trial itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("Trial ") and " failed with " in msg)


def import_optuna():
    """Optuna, with its logs quietened (copsd prints one line per failed trial itself)."""
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
    optuna = import_optuna()
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


def make_sampler(search: SearchSettings, worker: int = 0, trials_so_far: int = 0):
    """The spec's sampler, seeded by `sampler_seed`."""
    optuna = import_optuna()
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


def make_pruner(search: SearchSettings):
    optuna = import_optuna()
    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    if search.pruner == "threshold":
        side = "lower" if search.objective.direction == "maximize" else "upper"
        return optuna.pruners.ThresholdPruner(**{side: search.threshold})
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=search.n_startup_trials)


def suggest(trial, name: str, space) -> Any:
    if space.type == "categorical":
        return trial.suggest_categorical(name, space.choices)
    if space.type == "int":
        return trial.suggest_int(name, int(space.low), int(space.high), step=int(space.step or 1), log=space.log)
    return trial.suggest_float(name, space.low, space.high, step=space.step, log=space.log)
