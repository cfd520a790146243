"""One static page per sweep: its tables, figures, jobs and provenance (`copsd report html`).

The page is a single self-contained file (figures embedded as PNG data URIs, no network, no
JavaScript library), so it can be mailed, archived next to a paper draft, or logged to MLflow.
A few lines of inline script check on load that every figure decoded and say so on the page
when one did not (and record the counts on <body> for the headless-browser test).
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from copsd.errors import CopsdError
from copsd.redact import display_url
from copsd.reports.figures import figure_set
from copsd.reports.output import check_file_target, write_text
from copsd.reports.table_formats import render
from copsd.reports.tables import side_by_side

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.4em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td.text { text-align: left; }
tr:nth-child(even) td { background: #f7f7f7; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.skipped { color: #888; font-style: italic; }
#broken { color: #b00; font-weight: 600; }
.FAILED { color: #b00; } .DONE { color: #070; } .RUNNING { color: #a60; }
"""

SELF_CHECK = """
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figures = imgs.length;
  document.body.dataset.figuresLoaded = ok;
  if (ok < imgs.length) {
    const w = document.getElementById("broken");
    w.textContent = (imgs.length - ok) + " figure(s) failed to load";
    w.hidden = false;
  }
});
"""

FIGURE_CAPTIONS = {
    "curves": "Training dynamics: accuracy at each evaluated checkpoint; step 0 is the base model.",
    "delta_bars": "Gain over the base model per language, final checkpoint.",
    "format_vs_accuracy": "Format rate vs accuracy, one point per (job, checkpoint).",
    "repetition": "n-gram repetition rate (n = 2..6) by method, final checkpoint.",
    "scaling": "Test-time scaling: accuracy against the generation budget, final checkpoint.",
    "language_share": "Language of the responses (share of text identified as the target language, English, "
    "other), final checkpoint.",
    "accuracy_by_language": "Accuracy of the samples whose dominant language is the target vs English.",
}


def _table_html(df: pd.DataFrame, metric: str) -> str:
    try:
        return render(side_by_side(df, [metric], by="language"), "html")
    except CopsdError as exc:
        return f'<p class="skipped">{html.escape(metric)}: {html.escape(str(exc))}</p>'


def _table_metrics(df: pd.DataFrame) -> list[str]:
    """The metrics tabulated: Pass@k and Maj@k with several samples, the language share where measured."""
    several = (df.n_samples > 1).any()
    langs = ["target_language_rate"] if "target_language_rate" in df and df.target_language_rate.notna().any() else []
    return ["accuracy", *(["pass_at_k", "maj_at_k"] if several else []), "format_rate", *langs]


def _jobs_html(jobs: list) -> str:
    head = "<tr><th>job</th><th>method</th><th>model</th><th>language</th><th>seed</th><th>status</th>"
    head += "<th>attempts</th><th>seconds</th><th>last error</th></tr>"
    rows = []
    for j in sorted(jobs, key=lambda j: (j.method, j.language, j.seed, j.id)):
        secs = f"{(j.ended_at - j.started_at).total_seconds():.0f}" if j.ended_at and j.started_at else ""
        cells = [j.id, j.method, j.model, j.language, str(j.seed)]
        tds = "".join(f'<td class="text">{html.escape(c)}</td>' for c in cells)
        tds += f'<td class="text {html.escape(j.status)}">{html.escape(j.status)}</td>'
        tds += f"<td>{j.attempts}</td><td>{secs}</td><td class='text'>{html.escape(j.last_error or '')}</td>"
        rows.append(f"<tr>{tds}</tr>")
    return f"<table>\n<caption>Jobs ({len(jobs)})</caption>\n{head}\n" + "\n".join(rows) + "\n</table>\n"


def _provenance_html(jobs: list) -> str:
    """The distinct values of each provenance field over the sweep's jobs (one line when all agree)."""
    seen: dict[str, set[str]] = {}
    for j in jobs:
        for key, value in json.loads(j.provenance_json or "{}").items():
            if not key.endswith(("_data", "prompts")) and not key.startswith("train_"):
                seen.setdefault(key, set()).add(str(value))
    if not seen:
        return '<p class="skipped">no job has run yet</p>'
    items = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(', '.join(sorted(v)))}</li>" for k, v in sorted(seen.items())
    )
    return f"<ul>{items}</ul>"


def _failures_html(jobs: list) -> str:
    """Every FAILED job with the error that ended it (what to fix before rerunning)."""
    failed = [j for j in jobs if j.status == "FAILED"]
    if not failed:
        return ""
    items = "".join(
        f"<li><b>{html.escape(j.id)}</b> ({html.escape(' '.join([j.method, j.model, j.language, f'seed {j.seed}']))},"
        f" {j.attempts} attempt(s)): <code>{html.escape(j.last_error or 'no error recorded')}</code></li>"
        for j in sorted(failed, key=lambda j: (j.method, j.language, j.seed, j.id))
    )
    return f'<h2 id="failures">Failures</h2>\n<p>{len(failed)} of {len(jobs)} job(s) FAILED:</p>\n<ul>{items}</ul>'


def _figure_html(name: str, path: Path | None, note: str) -> str:
    caption = html.escape(FIGURE_CAPTIONS.get(name, name) + (f" {note}" if note and path else ""))
    if path is None:
        return f'<p class="skipped">{html.escape(name)} skipped: {html.escape(note)}</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure id="fig-{html.escape(name)}"><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def write_html_report(
    df: pd.DataFrame, jobs: list, out: Path, *, title: str, description: str = "", source: str = ""
) -> Path:
    """Render the page to `out` (figures' PNG/PDF files go to `<out stem>_figures/` beside it).
    Without results, the page still shows the jobs, and why those that FAILED failed."""
    if df.empty and not jobs:
        raise CopsdError("no results in the database for this selection; run a sweep first (copsd sweep run SPEC)")
    fig_dir = out.parent / f"{out.stem}_figures"
    check_file_target(out, None, dirs_beside=[fig_dir])
    figures = figure_set(df, fig_dir, "report") if not df.empty else {}
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    status = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style><script>{SELF_CHECK}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(description)}</p>' if description else "",
        f'<p class="meta">{len(jobs)} jobs ({html.escape(status)}); {len(df)} result rows; '
        f"from {html.escape(display_url(source))}; generated {when}</p>",
        '<p id="broken" hidden></p>',
        _failures_html(jobs),
        "<h2>Tables</h2>",
        *(_table_html(df, m) for m in (_table_metrics(df) if not df.empty else [])),
        *([] if not df.empty else ['<p class="skipped">no results yet: no job has finished an evaluation</p>']),
        "<h2>Figures</h2>",
        *(_figure_html(name, path, note) for name, (path, note) in figures.items()),
        *([] if figures else ['<p class="skipped">no figures: no results yet</p>']),
        "<h2>Jobs</h2>",
        _jobs_html(jobs),
        "<h2>Provenance</h2>",
        _provenance_html(jobs),
        "</body></html>",
    ]
    return write_text(out, "\n".join(p for p in parts if p) + "\n")
