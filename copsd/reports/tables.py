"""Paper-style comparison tables from the results database: the numbers (`copsd.reports.table_formats`
writes them as Markdown, LaTeX, CSV, HTML or a terminal table).

`build_table` turns result rows into a grid of cells (mean over seeds, std when there are
several, delta vs the base model, best per row). Rates are in percent; `mean_length` in tokens.

Every average over languages (the Avg row; the by-model and by-method views) is over one set of
languages, the same for every column, named in the title: `languages=` when given, else the
languages every column has results for, without English (the paper averages the low-resource
languages; English is the reference and gets its own row below the Avg).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from copsd.config import short_model_name
from copsd.errors import CopsdError
from copsd.results.schema import METRIC_COLUMNS, REPORT_METRICS

METHOD_ORDER = ("base", "sft", "grpo", "copsd")
REFERENCE_LANGUAGES = ("eng",)  # shown apart from, and not counted in, the default average
REPETITION_METRICS = tuple(m for m in METRIC_COLUMNS if m.startswith("repetition_"))
LOWER_IS_BETTER = {"truncation_rate", "mean_length", *REPETITION_METRICS}
NOT_PERCENT = {"mean_length"}


@dataclass
class Cell:
    mean: float
    std: float | None = None  # over seeds, when there are >= 2
    delta: float | None = None  # vs base in the same row/model
    n_seeds: int = 1
    best: bool = False


@dataclass
class Table:
    title: str
    row_name: str
    rows: list[str]
    columns: list[tuple[str, ...]]  # (model, method) or (method,) or (model,)
    cells: dict[tuple[str, tuple[str, ...]], Cell] = field(default_factory=dict)
    groups: list[list[int]] = field(default_factory=list)  # column indices compared for "best"


def method_key(method: str) -> tuple[int, str]:
    """Sort key: the paper's method order, then any other method by name."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def scale(metric: str) -> float:
    """Rates are shown in percent, lengths as they are."""
    return 1.0 if metric in NOT_PERCENT else 100.0


def metric_unit_label(metric: str) -> str:
    """The metric as an axis or title label: `accuracy (%)`, `mean_length`."""
    return metric + ("" if metric in NOT_PERCENT else " (%)")


def check_selection(df: pd.DataFrame, metric: str, benchmark: str | None) -> pd.DataFrame:
    """Validate the metric and narrow the results to one benchmark (shared by tables and figures)."""
    if metric not in REPORT_METRICS:
        raise CopsdError(f"unknown metric '{metric}'; choose from: {', '.join(REPORT_METRICS)}")
    if df.empty:
        raise CopsdError("no results in the database for this selection; run a sweep first (copsd sweep run SPEC)")
    if benchmark:
        return df[df.benchmark == benchmark]
    if df.benchmark.nunique() > 1:
        raise CopsdError(
            f"results span several benchmarks ({', '.join(sorted(df.benchmark.unique()))}); pick one with --benchmark"
        )
    return df


def at_full_budget(df: pd.DataFrame) -> pd.DataFrame:
    """Each job's rows at its largest decoding budget (the smaller ones serve test-time scaling)."""
    return df[df.max_new_tokens == df.groupby("job_id").max_new_tokens.transform("max")]


def at_final_step(df: pd.DataFrame) -> pd.DataFrame:
    """Each job's rows at its last evaluated checkpoint."""
    return df[df.step == df.groupby("job_id").step.transform("max")]


def select_rows(
    df: pd.DataFrame, metric: str, step: str = "final", benchmark: str | None = None, budget: int | None = None
) -> pd.DataFrame:
    """One result per job: the final (largest) checkpoint, the best one, or a given step."""
    df = check_selection(df, metric, benchmark)
    if budget:
        df = df[df.max_new_tokens == budget]
    else:
        df = at_full_budget(df)
    if df.empty:
        raise CopsdError("no results match --benchmark/--budget")
    if step == "final":
        df = at_final_step(df)
    elif step == "best":
        measured = df[df[metric].notna()]
        by_job = measured.groupby("job_id")[metric]
        best = df.loc[by_job.idxmin() if metric in LOWER_IS_BETTER else by_job.idxmax()]
        # a job whose metric was never measured (e.g. no identifiable language) has no best: its final
        unmeasured = at_final_step(df[~df.job_id.isin(measured.job_id)])
        df = pd.concat([best, unmeasured]) if not unmeasured.empty else best
    else:
        try:
            s = int(step)
        except ValueError:
            raise CopsdError(f"--step must be 'final', 'best' or a checkpoint number, not '{step}'") from None
        # base jobs have only step 0: they stand at every step
        df = df[(df.step == s) | (df.method == "base")]
    df = df.copy()
    df["model"] = df.model.map(short_model_name)
    return df


def averaged_languages(df: pd.DataFrame, languages: list[str] | None = None) -> list[str]:
    """The languages every average is taken over (see the module docstring)."""
    present = set(df.language.unique())
    if languages:
        missing = [lang for lang in languages if lang not in present]
        if missing:
            raise CopsdError(f"--languages: no results for {', '.join(missing)}; present: {', '.join(sorted(present))}")
        return list(dict.fromkeys(languages))
    per_column = [set(g) for _, g in df.groupby(["model", "method"]).language]
    common = set.intersection(*per_column) if per_column else set()
    chosen = sorted(common - set(REFERENCE_LANGUAGES)) or sorted(common)
    if not chosen:
        raise CopsdError("no language has results in every column; choose the averaged ones with --languages")
    return chosen


def _mean_over_languages(df: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Per (model, method, seed): the mean `value` over `languages`, only where all of them have one."""
    per_lang = df[df.language.isin(languages)].groupby(["model", "method", "seed", "language"]).value.mean()
    by_seed = per_lang.groupby(level=["model", "method", "seed"])
    complete = by_seed.count() == len(languages)
    return by_seed.mean()[complete].reset_index()


def _per_seed(df: pd.DataFrame, by: str, averaged: list[str]) -> pd.DataFrame:
    """One `value` per (cell, seed): per language (by language, with the average as the language
    "Avg"), or the average over the averaged languages (by model or method)."""
    avg = _mean_over_languages(df, averaged)
    if by != "language":
        return avg
    per_language = df.groupby(["language", "model", "method", "seed"]).value.mean().reset_index()
    return pd.concat([per_language, avg.assign(language="Avg")], ignore_index=True)


def _cell_stats(per_seed: pd.DataFrame, keys: list[str], lower_is_better: bool) -> pd.DataFrame:
    """Per cell (`keys`): mean, std and count over the seeds measured (a seed with nothing measured,
    e.g. no identifiable language, is left out), the delta vs the base model of the same keys, and
    whether it is the best of its comparison group (the same keys except the method)."""
    measured = per_seed.dropna(subset=["value"])
    stats = measured.groupby(keys).value.agg(mean="mean", std="std", n_seeds="count").reset_index()
    peers = [k for k in keys if k != "method"]
    base = stats.loc[stats.method == "base", [*peers, "mean"]].rename(columns={"mean": "base_mean"})
    stats = stats.merge(base, on=peers, how="left")
    stats["delta"] = (stats["mean"] - stats["base_mean"]).where(stats.method != "base")
    group = stats.groupby(peers)["mean"]
    extreme = group.transform("min" if lower_is_better else "max")
    stats["best"] = (group.transform("count") > 1) & np.isclose(stats["mean"], extreme, rtol=1e-9, atol=0.0)
    return stats


def _optional(x: float) -> float | None:
    return None if pd.isna(x) else float(x)


def build_table(
    df: pd.DataFrame,
    by: str = "language",
    metric: str = "accuracy",
    step: str = "final",
    benchmark: str | None = None,
    budget: int | None = None,
    languages: list[str] | None = None,
) -> Table:
    """Rows x columns: language x (model, method) (with an Avg row and English below it),
    model x method, or method x model; each cell the mean over seeds (std, delta vs base)."""
    if by not in ("language", "model", "method"):
        raise CopsdError(f"--by must be language, model or method, not '{by}'")
    df = select_rows(df, metric, step, benchmark, budget)
    df["value"] = df[metric] * scale(metric)
    averaged = averaged_languages(df, languages)
    models = sorted(df.model.unique())
    methods = sorted(df.method.unique(), key=method_key)
    if by == "language":
        shown = sorted(df.language.unique())
        reference = [x for x in shown if x in REFERENCE_LANGUAGES]
        rows = [x for x in shown if x not in reference] + ["Avg"] + reference
        present = set(zip(df.model, df.method))
        columns: list[tuple[str, ...]] = [(m, me) for m in models for me in methods if (m, me) in present]
        groups = [[i for i, c in enumerate(columns) if c[0] == m] for m in models]  # "best" within a model
    elif by == "model":
        rows, columns, groups = models, [(me,) for me in methods], [list(range(len(methods)))]
    else:  # best per column (model), across the rows (methods)
        rows, columns, groups = methods, [(m,) for m in models], []

    keys = ["language", "model", "method"] if by == "language" else ["model", "method"]
    stats = _cell_stats(_per_seed(df, by, averaged), keys, metric in LOWER_IS_BETTER)
    column_keys = [k for k in keys if k != by]
    t = Table(
        title=f"{metric_unit_label(metric)} by {by}, {step} checkpoint ({steps_shown(df)}); "
        f"averages over {', '.join(averaged)}",
        row_name=by,
        rows=rows,
        columns=columns,
        groups=groups,
    )
    for s in stats.itertuples(index=False):
        t.cells[(getattr(s, by), tuple(getattr(s, k) for k in column_keys))] = Cell(
            mean=float(s.mean),
            std=_optional(s.std),
            delta=_optional(s.delta),
            n_seeds=int(s.n_seeds),
            best=bool(s.best),
        )
    return t


def steps_shown(df: pd.DataFrame) -> str:
    """Which checkpoint steps the table's trained cells come from, e.g. 'step 50; base: step 0'."""
    trained = sorted(int(x) for x in df[df.method != "base"].step.unique())
    if not trained:
        return "step 0"
    shown = f"step {trained[0]}" if len(trained) == 1 else "steps " + ", ".join(map(str, trained))
    return shown + ("; base: step 0" if (df.method == "base").any() else "")


def metric_label(metric: str, k: int | None) -> str:
    """The paper's names: accuracy = Avg@k, pass_at_k = Pass@k, maj_at_k = Maj@k."""
    names = {"accuracy": "Avg@{k}", "pass_at_k": "Pass@{k}", "maj_at_k": "Maj@{k}"}
    return names[metric].format(k=k or "k") if metric in names else metric


def with_grader(df: pd.DataFrame, grader: str | None) -> pd.DataFrame:
    """Read accuracy / pass_at_k / maj_at_k from one grader's columns (`--grader`)."""
    if grader is None:
        return df
    if grader not in ("paper", "lenient"):
        raise CopsdError(f"--grader must be paper or lenient, not '{grader}'")
    df = df.copy()
    for m in ("accuracy", "pass_at_k", "maj_at_k"):
        col = f"{m}_{grader}"
        if col not in df or df[col].isna().any():
            raise CopsdError(
                f"--grader {grader}: some results predate per-grader columns (copsd < 0.2); re-evaluate them or drop --grader"
            )
        df[m] = df[col]
    return df


def side_by_side(df: pd.DataFrame, metrics: list[str], **kwargs) -> Table:
    """One table per metric, merged so each column shows every metric next to each other
    (e.g. Pass@12 and Avg@12 under each model/method)."""
    if len(metrics) == 1:
        return build_table(df, metric=metrics[0], **kwargs)
    k = int(df.n_samples.max()) if "n_samples" in df and len(df) else None
    parts = [(metric_label(m, k), build_table(df, metric=m, **kwargs)) for m in metrics]
    first = parts[0][1]
    columns = [(*c, name) for c in first.columns for name, _ in parts]
    merged = Table(
        title=" / ".join(name for name, _ in parts) + " (%)" + first.title[first.title.index(" by ") :],
        row_name=first.row_name,
        rows=first.rows,
        columns=columns,
    )
    for name, t in parts:
        for (r, c), cell in t.cells.items():
            merged.cells[(r, (*c, name))] = cell
    width = len(parts)
    merged.groups = [[i * width + j for i in g] for g in first.groups for j in range(width)]
    return merged
