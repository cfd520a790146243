"""How every report figure is drawn and saved (result figures, training curves, tuning plots):
matplotlib on the file-only Agg backend, every string as plain text, one colour per method, and
PNG + PDF written atomically."""

from __future__ import annotations

from pathlib import Path

from copsd.reports.output import replacing

# Every string in a figure is plain text: a model directory, language or sweep named `a$b$`,
# `x_{`, `\foo` must be drawn as written, never parsed as mathtext or handed to LaTeX (an
# unparsable one would crash the figure). No figure of ours uses mathtext on purpose.
PLAIN_TEXT: dict = {"text.usetex": False, "text.parse_math": False, "axes.formatter.use_mathtext": False}

# the same method, the same colour, in every figure (a method not named here: matplotlib's cycle)
METHOD_COLORS = {"base": "grey", "sft": "C0", "grpo": "C1", "copsd": "C2"}
# which language a response is written in (figures.language_share, figures.accuracy_by_language)
RESPONSE_LANGUAGE_COLORS = {"target": "C2", "English": "C0", "other": "lightgrey"}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, rect: tuple[float, float, float, float] | None = None, pdf: bool = True) -> Path:
    """The one way every report figure is laid out and saved: each text set to plain (also those
    drawn while saving, under PLAIN_TEXT), PNG at `out` and (`pdf`) PDF beside it, each written
    under a temporary name and renamed; a failed write is one line naming the file. Closes `fig`."""
    import matplotlib
    from matplotlib.text import Text

    plt = pyplot()
    try:
        with matplotlib.rc_context(PLAIN_TEXT):
            for text in fig.findobj(Text):
                text.set_usetex(False)
                text.set_parse_math(False)
            fig.tight_layout(**({"rect": rect} if rect else {}))
            with replacing(out) as tmp:
                fig.savefig(tmp, dpi=110, format="png")
            if pdf:
                with replacing(out.with_suffix(".pdf")) as tmp:
                    fig.savefig(tmp, format="pdf")
    finally:
        plt.close(fig)
    return out
