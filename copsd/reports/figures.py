"""The paper's analysis figures from the results DB (PNG + PDF each), as far as the data allows:

- `delta_bars`: accuracy gain over the base per language and method (final checkpoint);
- `format_vs_accuracy`: format rate against accuracy, one point per (job, checkpoint), with
  Pearson's r (the paper reports their correlation);
- `repetition`: repetition rate for n = 2..6 by method (final checkpoint, mean over languages);
- `scaling`: accuracy against the decoding budget (test-time scaling), when results exist at
  more than one `max_new_tokens`;
- `curves`: the training dynamics (`plots.plot_curves`).
A figure whose data is missing is skipped with the reason, never drawn empty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from copsd.reports.plots import plot_curves
from copsd.reports.tables import METHOD_ORDER, build_table, check_selection, select_rows
from copsd.results.schema import METRIC_COLUMNS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    fig.savefig(out.with_suffix(".pdf"))
    _plt().close(fig)
    return out


COLORS = {"base": "grey", "sft": "C0", "grpo": "C1", "copsd": "C2"}  # the same method, the same colour


def _methods(df: pd.DataFrame) -> list[str]:
    return sorted(df.method.unique(), key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))


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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) * max(1, len(cols)) / 2), 3.4))
    width = 0.8 / len(cols)
    for k, c in enumerate(cols):
        vals = [t.cells[(r, c)].delta if has(r, c) else np.nan for r in rows]
        label = " ".join(c) if len({m for m, _ in cols}) > 1 else c[1]
        ax.bar(np.arange(len(rows)) + k * width, vals, width, label=label, color=COLORS.get(c[1]))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(np.arange(len(rows)) + width * (len(cols) - 1) / 2, rows)
    ax.set(ylabel="accuracy gain over base (points)", title="gain over the base model, final checkpoint")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, out)


def format_vs_accuracy(df: pd.DataFrame, out: Path, benchmark: str | None = None) -> tuple[Path, float | None]:
    df = check_selection(df, "accuracy", benchmark)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for method in _methods(df):
        g = df[df.method == method]
        ax.scatter(100 * g.format_rate, 100 * g.accuracy, s=14, alpha=0.7, label=method, color=COLORS.get(method))
    r = pearson_r(df.format_rate, df.accuracy)
    ax.set(xlabel="format rate (%)", ylabel="accuracy (%)",
           title=f"format rate vs accuracy (Pearson r = {r:.2f}, n = {len(df)})" if r is not None else
           f"format rate vs accuracy (n = {len(df)})")  # fmt: skip
    ax.legend(fontsize=8)
    return _save(fig, out), r


def repetition(df: pd.DataFrame, out: Path, benchmark: str | None = None) -> Path:
    df = select_rows(df, "repetition_rate", "final", benchmark)
    ns = [c for c in METRIC_COLUMNS if c.startswith("repetition_") and c[-1].isdigit()]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for method in _methods(df):
        g = df[df.method == method]
        ys = [100 * g[c].mean() for c in ns]
        ax.plot([int(c[-1]) for c in ns], ys, marker="o", label=method, color=COLORS.get(method))
    ax.set(xlabel="n (n-gram)", ylabel="repetition rate (%)", title="repetition by method, final checkpoint")
    ax.legend(fontsize=8)
    return _save(fig, out)


def scaling(df: pd.DataFrame, out: Path, benchmark: str | None = None) -> Path | str:
    df = check_selection(df, "accuracy", benchmark)
    df = df[df.step == df.groupby("job_id").step.transform("max")]
    if df.max_new_tokens.nunique() < 2:
        return "results exist at one decoding budget only (add eval.decoding.max_new_tokens values to the spec)"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for method in _methods(df):
        g = df[df.method == method].groupby("max_new_tokens").accuracy.mean()
        ax.plot(g.index, 100 * g.values, marker="o", label=method, color=COLORS.get(method))
    ax.set(xscale="log", xlabel="generation budget (tokens)", ylabel="accuracy (%)", title="test-time scaling")
    ax.legend(fontsize=8)
    return _save(fig, out)


def write_figures(df: pd.DataFrame, out_dir: Path, prefix: str, benchmark: str | None = None) -> dict[str, str]:
    """Every figure the data supports, under `out_dir`; {name: path or the reason it was skipped}."""
    done: dict[str, str] = {}
    done["curves"] = str(plot_curves(df, out_dir / f"{prefix}_curves_accuracy.png", "accuracy", benchmark))
    bars = delta_bars(df, out_dir / f"{prefix}_delta_bars.png", benchmark)
    done["delta_bars"] = f"skipped: {bars}" if isinstance(bars, str) else str(bars)
    path, r = format_vs_accuracy(df, out_dir / f"{prefix}_format_vs_accuracy.png", benchmark)
    done["format_vs_accuracy"] = f"{path} (Pearson r = {r:.3f})" if r is not None else str(path)
    done["repetition"] = str(repetition(df, out_dir / f"{prefix}_repetition.png", benchmark))
    sc = scaling(df, out_dir / f"{prefix}_scaling.png", benchmark)
    done["scaling"] = f"skipped: {sc}" if isinstance(sc, str) else str(sc)
    return done
