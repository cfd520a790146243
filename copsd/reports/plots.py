"""Training-dynamics plots: a metric against the checkpoint step, one panel per language, one
line per (model, method) (mean over seeds, shaded ± std), the base model as a dashed level."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from copsd.config import short_model_name
from copsd.reports.tables import METHOD_ORDER, NOT_PERCENT, check_selection


def plot_curves(df: pd.DataFrame, out: Path, metric: str = "accuracy", benchmark: str | None = None) -> Path:
    df = check_selection(df, metric, benchmark)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = df.copy()
    df["model"] = df.model.map(short_model_name)
    df["value"] = df[metric] * (1.0 if metric in NOT_PERCENT else 100.0)
    langs = sorted(df.language.unique())
    fig, axes = plt.subplots(1, len(langs), figsize=(4.2 * len(langs), 3.4), squeeze=False, sharey=True)
    order = lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)  # noqa: E731
    for ax, lang in zip(axes[0], langs):
        sub = df[df.language == lang]
        for (model, method), g in sorted(sub.groupby(["model", "method"]), key=lambda kv: (kv[0][0], order(kv[0][1]))):
            stats = g.groupby("step").value.agg(["mean", "std"]).reset_index()
            label = f"{model} {method}" if sub.model.nunique() > 1 else method
            if method == "base" or len(stats) == 1:
                ax.axhline(stats["mean"].iloc[0], linestyle="--", color="grey", label=label)
                continue
            line = ax.plot(stats.step, stats["mean"], marker="o", label=label)[0]
            if stats["std"].notna().any():
                ax.fill_between(
                    stats.step,
                    stats["mean"] - stats["std"].fillna(0),
                    stats["mean"] + stats["std"].fillna(0),
                    color=line.get_color(),
                    alpha=0.15,
                )
        ax.set(title=lang, xlabel="training step")
    axes[0][0].set_ylabel(metric + ("" if metric in NOT_PERCENT else " (%)"))
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
