"""The paper's analysis figures from the results DB (PNG + PDF each), as far as the data allows:

- `delta_bars`: accuracy gain over the base per language and method (final checkpoint);
- `format_vs_accuracy`: format rate against accuracy, one point per (job, checkpoint), with
  Pearson's r (the paper reports their correlation);
- `repetition`: repetition rate for n = 2..6 by method (final checkpoint, mean over languages);
- `scaling`: accuracy against the decoding budget (test-time scaling), when results exist at
  more than one budget (`eval.budgets`);
- `language_share`: which language the responses are written in, per language and method (stacked
  bars: target language, English, other; final checkpoint; `copsd.evaluation.language_id`);
- `accuracy_by_language`: accuracy of the samples whose dominant language is the target vs
  English, per method (is English reasoning more accurate?);
- `curves`: the training dynamics (`copsd.reports.curves`).
A figure whose data is missing is skipped with the reason, never drawn empty. Each is drawn and
saved the one way `copsd.reports.figure_style` sets (plain text, METHOD_COLORS, PNG + PDF).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from copsd.reports.curves import plot_curves
from copsd.reports.figure_style import METHOD_COLORS, RESPONSE_LANGUAGE_COLORS, pyplot, save_figure
from copsd.reports.tables import (
    REFERENCE_LANGUAGES,
    REPETITION_METRICS,
    at_final_step,
    at_full_budget,
    build_table,
    check_selection,
    method_key,
    select_rows,
)


def _methods(df: pd.DataFrame) -> list[str]:
    return sorted(df.method.unique(), key=method_key)


def pearson_r(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def delta_bars(df: pd.DataFrame, out: Path, benchmark: str | None = None) -> Path | str:
    t = build_table(df, by="language", benchmark=benchmark)
    cols = [c for c in t.columns if c[1] != "base"]
    has = lambda r, c: (r, c) in t.cells and t.cells[(r, c)].delta is not None  # noqa: E731
    rows = [r for r in t.rows if r != "Avg" and any(has(r, c) for c in cols)]
    if not rows:
        return "no trained method to compare with the base"
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) * max(1, len(cols)) / 2), 3.4))
    width = 0.8 / len(cols)
    for k, c in enumerate(cols):
        vals = [t.cells[(r, c)].delta if has(r, c) else np.nan for r in rows]
        label = " ".join(c) if len({m for m, _ in cols}) > 1 else c[1]
        ax.bar(np.arange(len(rows)) + k * width, vals, width, label=label, color=METHOD_COLORS.get(c[1]))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(np.arange(len(rows)) + width * (len(cols) - 1) / 2, rows)
    ax.set(ylabel="accuracy gain over base (points)", title="gain over the base model, final checkpoint")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, out)


def format_vs_accuracy(df: pd.DataFrame, out: Path, benchmark: str | None = None) -> tuple[Path, float | None]:
    df = at_full_budget(check_selection(df, "accuracy", benchmark))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for method in _methods(df):
        g = df[df.method == method]
        ax.scatter(
            100 * g.format_rate, 100 * g.accuracy, s=14, alpha=0.7, label=method, color=METHOD_COLORS.get(method)
        )
    r = pearson_r(df.format_rate, df.accuracy)
    ax.set(xlabel="format rate (%)", ylabel="accuracy (%)",
           title=f"format rate vs accuracy (Pearson r = {r:.2f}, n = {len(df)})" if r is not None else
           f"format rate vs accuracy (n = {len(df)})")  # fmt: skip
    ax.legend(fontsize=8)
    return save_figure(fig, out), r


def repetition(df: pd.DataFrame, out: Path, benchmark: str | None = None) -> Path:
    df = select_rows(df, "repetition_rate", "final", benchmark)
    ns = [c for c in REPETITION_METRICS if c[-1].isdigit()]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for method in _methods(df):
        g = df[df.method == method]
        ys = [100 * g[c].mean() for c in ns]
        ax.plot([int(c[-1]) for c in ns], ys, marker="o", label=method, color=METHOD_COLORS.get(method))
    ax.set(xlabel="n (n-gram)", ylabel="repetition rate (%)", title="repetition by method, final checkpoint")
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def scaling(df: pd.DataFrame, out: Path, benchmark: str | None = None) -> Path | str:
    """Accuracy at each decoding budget of the final checkpoint, averaged over the languages every
    method has (English left out when others remain), so each line averages the same set."""
    df = at_final_step(check_selection(df, "accuracy", benchmark))
    if df.max_new_tokens.nunique() < 2:
        return "results exist at one decoding budget only (add eval.budgets to the spec)"
    langs = set.intersection(*(set(g.language) for _, g in df.groupby("method")))
    langs = langs - set(REFERENCE_LANGUAGES) or langs
    if not langs:
        return "no language has results for every method"
    df = df[df.language.isin(langs)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for method in _methods(df):
        g = df[df.method == method].groupby("max_new_tokens").accuracy.mean()
        ax.plot(g.index, 100 * g.values, marker="o", label=method, color=METHOD_COLORS.get(method))
    budgets = sorted(df.max_new_tokens.unique())
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(b) for b in budgets])  # the budgets themselves, not 2x10^1
    ax.minorticks_off()
    ax.set(
        xlabel="generation budget (tokens)",
        ylabel="accuracy (%)",
        title=f"test-time scaling ({', '.join(sorted(langs))})",
    )
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def _final_language_rows(df: pd.DataFrame, benchmark: str | None) -> pd.DataFrame | str:
    df = select_rows(df, "accuracy", "final", benchmark)
    if "target_language_rate" not in df or df.english_rate.isna().all():
        return "no language identification in these results (rows written before copsd's schema v4)"
    return df


def language_share(df: pd.DataFrame, out: Path, benchmark: str | None = None) -> Path | str:
    """Stacked bars, one per (language, method): the share of response letters identified as the
    target language, as English, and as anything else (final checkpoint, mean over seeds).
    A target the identifier does not know has no target share: its bar shows English and the rest."""
    rows = _final_language_rows(df, benchmark)
    if isinstance(rows, str):
        return rows
    g = rows.groupby(["language", "method"])[["target_language_rate", "english_rate"]].mean().reset_index()
    g = g[g.english_rate.notna()]  # nothing identifiable (only numbers and short phrases): no bar, not "other"
    order = {m: i for i, m in enumerate(_methods(g))}
    g = g.sort_values(["language", "method"], key=lambda s: s.map(order) if s.name == "method" else s)
    eng = g.language == "eng"
    target = g.target_language_rate.where(~eng, 0.0).fillna(0.0)  # English targets: one colour
    english = g.english_rate.fillna(0.0)
    other = (1.0 - target - english).clip(lower=0.0)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.8, 0.55 * len(g) + 1.5), 3.6))
    x = np.arange(len(g))
    colors = RESPONSE_LANGUAGE_COLORS
    ax.bar(x, 100 * target, color=colors["target"], label="target language")
    ax.bar(x, 100 * english, bottom=100 * target, color=colors["English"], label="English")
    ax.bar(x, 100 * other, bottom=100 * (target + english), color=colors["other"], label="other / unsupported")
    ax.set_xticks(x, [f"{lang}\n{m}" for lang, m in zip(g.language, g.method)], fontsize=7)
    ax.set(ylabel="share of response text (%)", ylim=(0, 100), title="language of the responses, final checkpoint")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, out)


def accuracy_by_language(df: pd.DataFrame, out: Path, benchmark: str | None = None) -> Path | str:
    """Accuracy of the samples dominated by the target language vs by English, per method (mean
    over non-English languages and seeds, final checkpoint); the share of samples in each group
    is printed on its bar."""
    rows = _final_language_rows(df, benchmark)
    if isinstance(rows, str):
        return rows
    rows = rows[rows.language != "eng"]
    cols = ["accuracy_target_dominant", "accuracy_english_dominant", "target_dominant_rate", "english_dominant_rate"]
    g = rows.groupby("method")[cols].mean()
    if g[cols[:2]].isna().all().all():
        return "no sample is dominated by the target language or by English (or no non-English language)"
    methods = [m for m in _methods(rows) if m in g.index]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.6, 1.2 * len(methods) + 1.5), 3.4))
    x = np.arange(len(methods))
    for k, (acc, share, label, color) in enumerate(
        [
            (cols[0], cols[2], "target-language samples", RESPONSE_LANGUAGE_COLORS["target"]),
            (cols[1], cols[3], "English samples", RESPONSE_LANGUAGE_COLORS["English"]),
        ]
    ):
        vals = [100 * g.loc[m, acc] if pd.notna(g.loc[m, acc]) else np.nan for m in methods]
        bars = ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, color=color, label=label)
        for b, m in zip(bars, methods):
            if pd.notna(g.loc[m, share]) and pd.notna(b.get_height()):
                ax.annotate(f"{100 * g.loc[m, share]:.0f}% of samples", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=6)  # fmt: skip
    ax.set_xticks(x, methods)
    ax.set(ylabel="accuracy (%)", title="accuracy by the sample's dominant language")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, out)


def job_figures(df: pd.DataFrame, job_id: str, out_dir: Path) -> list[Path]:
    """The figures of one job, for its MLflow run: its curve from the base model (step 0) and, with
    several budgets, its test-time scaling. `df` holds the job's rows and may hold others of the
    same model and language: only base-model rows evaluated the same way are drawn beside it."""
    mine = df[df.job_id == job_id]
    if mine.empty:
        return []
    first = mine.iloc[0]
    same_eval = (df.benchmark == first.benchmark) & (df.split == first.split) & (df.n_samples == first.n_samples)
    base = df[(df.method == "base") & (df.model == first.model) & (df.language == first.language) & same_eval]
    df = pd.concat([mine, base[base.job_id != job_id]], ignore_index=True)
    out: list[Path] = []
    if first.method != "base":
        out.append(plot_curves(df, out_dir / "curves_accuracy.png", "accuracy"))
    sc = scaling(df, out_dir / "scaling.png")
    if not isinstance(sc, str):
        out.append(sc)
    return out


def figure_set(
    df: pd.DataFrame, out_dir: Path, prefix: str, benchmark: str | None = None
) -> dict[str, tuple[Path | None, str]]:
    """Every figure the data supports, under `out_dir`: {name: (PNG path, note)}, or (None, the
    reason it was skipped)."""
    done: dict[str, tuple[Path | None, str]] = {}
    done["curves"] = (plot_curves(df, out_dir / f"{prefix}_curves_accuracy.png", "accuracy", benchmark), "")
    bars = delta_bars(df, out_dir / f"{prefix}_delta_bars.png", benchmark)
    done["delta_bars"] = (None, bars) if isinstance(bars, str) else (bars, "")
    path, r = format_vs_accuracy(df, out_dir / f"{prefix}_format_vs_accuracy.png", benchmark)
    done["format_vs_accuracy"] = (path, f"(Pearson r = {r:.3f})" if r is not None else "")
    done["repetition"] = (repetition(df, out_dir / f"{prefix}_repetition.png", benchmark), "")
    sc = scaling(df, out_dir / f"{prefix}_scaling.png", benchmark)
    done["scaling"] = (None, sc) if isinstance(sc, str) else (sc, "")
    for name, draw in (("language_share", language_share), ("accuracy_by_language", accuracy_by_language)):
        got = draw(df, out_dir / f"{prefix}_{name}.png", benchmark)
        done[name] = (None, got) if isinstance(got, str) else (got, "")
    return done


def write_figures(df: pd.DataFrame, out_dir: Path, prefix: str, benchmark: str | None = None) -> dict[str, str]:
    """`figure_set` as lines to print: {name: "path [note]" or "skipped: reason"}."""
    return {
        name: f"skipped: {note}" if path is None else f"{path} {note}".strip()
        for name, (path, note) in figure_set(df, out_dir, prefix, benchmark).items()
    }
