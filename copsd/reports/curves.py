"""Training-dynamics curves: a metric against the checkpoint step, one panel per language that a
method was trained on, one line per (model, method) (mean over seeds, shaded ± std), the base
model as a dashed level. Every trained line starts at step 0 from the base model's value (LoRA's
B starts at zero, so step 0 is the base model), so the curve shows the gain from where it began."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from copsd.config import short_model_name
from copsd.reports.figure_style import METHOD_COLORS, pyplot, save_figure
from copsd.reports.tables import at_full_budget, check_selection, method_key, metric_unit_label, scale

MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # the method is the colour; with several models, the marker


def curve_data(df: pd.DataFrame, metric: str = "accuracy", benchmark: str | None = None) -> dict[str, dict]:
    """{language: {(model, method): DataFrame(step, mean, std)}} for the languages with a trained
    line (all languages when nothing was trained); trained lines get the base model as step 0."""
    df = at_full_budget(check_selection(df, metric, benchmark)).copy()
    df["model"] = df.model.map(short_model_name)
    df["value"] = df[metric] * scale(metric)
    trained = set(df[df.method != "base"].language)
    out: dict[str, dict] = {}
    for lang in sorted(trained or set(df.language)):
        sub = df[df.language == lang]
        lines = {}
        groups = sorted(sub.groupby(["model", "method"]), key=lambda kv: (kv[0][0], method_key(kv[0][1])))
        for (model, method), g in groups:
            stats = g.groupby("step").value.agg(["mean", "std"]).reset_index()
            base = sub[(sub.model == model) & (sub.method == "base")]
            if method != "base" and 0 not in set(stats.step) and not base.empty:
                start = pd.DataFrame({"step": [0], "mean": [base.value.mean()], "std": [float("nan")]})
                stats = pd.concat([start, stats], ignore_index=True)
            lines[(model, method)] = stats
        out[lang] = lines
    return out


def plot_curves(df: pd.DataFrame, out: Path, metric: str = "accuracy", benchmark: str | None = None) -> Path:
    """Write the figure as PNG at `out` and as PDF beside it (for papers); returns `out`."""
    data = curve_data(df, metric, benchmark)
    plt = pyplot()
    langs = list(data)
    fig, axes = plt.subplots(1, len(langs), figsize=(4.2 * len(langs), 3.4), squeeze=False, sharey=True)
    models = sorted({model for lines in data.values() for model, _ in lines})
    for ax, lang in zip(axes[0], langs):
        for (model, method), stats in data[lang].items():
            label = f"{model} {method}" if len(models) > 1 else method
            color = METHOD_COLORS.get(method)
            if method == "base" or len(stats) == 1:
                ax.axhline(stats["mean"].iloc[0], linestyle="--", color=color or "grey", label=label)
                continue
            marker = MODEL_MARKERS[models.index(model) % len(MODEL_MARKERS)]
            line = ax.plot(stats.step, stats["mean"], marker=marker, label=label, color=color)[0]
            if stats["std"].notna().any():
                ax.fill_between(
                    stats.step,
                    stats["mean"] - stats["std"].fillna(0),
                    stats["mean"] + stats["std"].fillna(0),
                    color=line.get_color(),
                    alpha=0.15,
                )
        ax.set(title=lang, xlabel="training step")
    axes[0][0].set_ylabel(metric_unit_label(metric))
    handles: dict = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=8)
    return save_figure(fig, out, rect=(0, 0, 0.88, 1))
