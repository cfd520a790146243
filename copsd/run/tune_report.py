"""The reading side of `copsd tune`: the objective read back from the results DB (`objective_value`,
for the study loop) and, for `copsd report tune`, the study opened read-only, its trials as a table
(`trials_frame`) and its plots (`tune_figures`).

Apart from the study loop (`copsd.run.tune`): nothing here writes, to Optuna's tables or any other.
"""

from __future__ import annotations

import warnings

import pandas as pd

from copsd.errors import CopsdError
from copsd.redact import display_url, shorten
from copsd.results.db import ResultsDB
from copsd.run.tune_space import ERROR_ATTR, INTERRUPTED_ATTR, import_optuna
from copsd.spec import SearchSettings


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


def read_storage(url: str):
    """Optuna's storage on an existing results DB, opened read-only (as `ResultsDB(readonly=True)`
    opens it: SQLite `mode=ro`, PostgreSQL read-only transactions); None when the DB has no Optuna
    tables. Never creates them, nor anything else: `copsd report tune` leaves the file as it was."""
    optuna = import_optuna()
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
    optuna = import_optuna()
    store = read_storage(url)
    names = [s.study_name for s in store.get_all_studies()] if store is not None else []
    if study not in names:
        known = ", ".join(sorted(names)) or "none"
        raise CopsdError(f"no study named '{study}' in {display_url(url)}; known: {known}")
    return optuna.load_study(study_name=study, storage=store)


def trials_frame(url: str, study: str) -> pd.DataFrame:
    """The study's trials (number, state, value, params, job ids), best first."""
    optuna = import_optuna()
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
