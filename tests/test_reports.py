"""Report tables: seeds aggregated, delta vs base, best per row, step selection, formats."""

from __future__ import annotations

import pytest

from copsd.config import JobConfig
from copsd.errors import CopsdError
from copsd.reports import build_table, render
from copsd.results import ResultsDB
from copsd.results.schema import METRIC_COLUMNS


def _job(method, model, lang, seed):
    return JobConfig(
        method=method, model=model, language=lang, seed=seed, eval={"benchmark": "mgsm", "checkpoints": [5, 10]}
    )


@pytest.fixture
def db(db_url):  # every report test runs on SQLite and on a real PostgreSQL server
    d = ResultsDB(db_url)
    # accuracy per (method, model, language, seed, step) chosen so the expected table is easy to check
    acc = {
        ("base", "swa", 0, 0): 0.10,
        ("base", "swa", 1, 0): 0.20,
        ("base", "eng", 0, 0): 0.50,
        ("base", "eng", 1, 0): 0.50,
        ("copsd", "swa", 0, 5): 0.90,
        ("copsd", "swa", 0, 10): 0.30,
        ("copsd", "swa", 1, 10): 0.40,
        ("copsd", "eng", 0, 10): 0.40,
        ("copsd", "eng", 1, 10): 0.40,
    }
    jobs = {}
    for (method, lang, seed, step), a in acc.items():
        j = jobs.setdefault((method, lang, seed), _job(method, "Org/M-1B", lang, seed))
        d.register_sweep("t", [j])
        d.add_result(
            j.job_id,
            benchmark="mgsm",
            language=lang,
            split="test",
            step=step,
            max_new_tokens=1024,
            n_samples=12,
            n_problems=250,
            metrics={
                **{c: 0.0 for c in METRIC_COLUMNS},
                "accuracy": a,
                "pass_at_k": min(1.0, 2 * a),
                "accuracy_paper": a,
                "pass_at_k_paper": min(1.0, 2 * a),
                "maj_at_k_paper": a,
                "accuracy_lenient": a + 0.05,
                "pass_at_k_lenient": min(1.0, 2 * a + 0.05),
                "maj_at_k_lenient": a,
            },
        )
    yield d
    d.close()


def test_by_language_final_checkpoint(db):
    t = build_table(db.results_frame("t"), by="language", metric="accuracy")
    assert t.rows == ["swa", "Avg", "eng"]  # English apart, below the average of the others
    assert t.title.endswith("averages over swa")
    assert "final checkpoint (step 10; base: step 0)" in t.title  # the step shown is stated
    assert t.columns == [("M-1B", "base"), ("M-1B", "copsd")]
    base_swa, copsd_swa = t.cells[("swa", ("M-1B", "base"))], t.cells[("swa", ("M-1B", "copsd"))]
    assert base_swa.mean == pytest.approx(15.0) and base_swa.std == pytest.approx(7.0710678)
    assert copsd_swa.mean == pytest.approx(35.0)  # final step 10, not the better step 5
    assert copsd_swa.delta == pytest.approx(20.0) and copsd_swa.best and not base_swa.best
    eng = t.cells[("eng", ("M-1B", "copsd"))]
    assert eng.delta == pytest.approx(-10.0) and t.cells[("eng", ("M-1B", "base"))].best
    avg = t.cells[("Avg", ("M-1B", "copsd"))]
    assert avg.mean == pytest.approx(35.0) and avg.n_seeds == 2 and avg.delta == pytest.approx(20.0)
    assert t.cells[("Avg", ("M-1B", "base"))].mean == pytest.approx(15.0)  # the same language set in every column
    md = render(t, "markdown")
    assert "| swa | 15.00 ± 7.07 | **35.00 ± 7.07 (+20.00)** |" in md


def test_pass_and_avg_side_by_side_and_grader_choice(db):
    from copsd.reports.tables import side_by_side, with_grader

    df = db.results_frame("t")
    t = side_by_side(df, ["pass_at_k", "accuracy"], by="language")
    assert t.columns == [
        ("M-1B", "base", "Pass@12"),
        ("M-1B", "base", "Avg@12"),
        ("M-1B", "copsd", "Pass@12"),
        ("M-1B", "copsd", "Avg@12"),
    ]
    assert t.title.startswith("Pass@12 / Avg@12 (%) by language")
    assert t.cells[("swa", ("M-1B", "copsd", "Pass@12"))].mean == pytest.approx(70.0)
    assert t.cells[("swa", ("M-1B", "copsd", "Avg@12"))].mean == pytest.approx(35.0)
    # "best" compares a metric with itself: copsd wins Pass@12 and Avg@12 on swa
    assert t.cells[("swa", ("M-1B", "copsd", "Pass@12"))].best and t.cells[("swa", ("M-1B", "copsd", "Avg@12"))].best
    assert "Pass@12" in render(t, "markdown")
    lenient = build_table(with_grader(df, "lenient"), by="language")
    assert lenient.cells[("swa", ("M-1B", "copsd"))].mean == pytest.approx(40.0)
    with pytest.raises(CopsdError, match="--grader"):
        with_grader(df, "strict")


def test_step_selection(db):
    best = build_table(db.results_frame("t"), by="language", step="best")
    assert best.cells[("swa", ("M-1B", "copsd"))].mean == pytest.approx(65.0)  # seed0 step5=90, seed1=40
    s5 = build_table(db.results_frame("t"), by="language", step="5")
    assert s5.cells[("swa", ("M-1B", "copsd"))].mean == pytest.approx(90.0)
    assert ("eng", ("M-1B", "copsd")) not in s5.cells
    assert s5.cells[("swa", ("M-1B", "base"))].mean == pytest.approx(15.0)  # base stands at every step
    with pytest.raises(CopsdError, match="--step"):
        build_table(db.results_frame("t"), step="last")


def test_by_model_and_method(db):
    t = build_table(db.results_frame("t"), by="model")
    assert t.rows == ["M-1B"] and t.cells[("M-1B", ("copsd",))].mean == pytest.approx(35.0)
    t = build_table(db.results_frame("t"), by="method")
    assert t.rows == ["base", "copsd"] and t.cells[("copsd", ("M-1B",))].delta == pytest.approx(35.0 - 15.0)
    both = build_table(db.results_frame("t"), by="method", languages=["swa", "eng"])
    assert both.cells[("copsd", ("M-1B",))].delta == pytest.approx(37.5 - 32.5) and "swa, eng" in both.title


def test_averages_compare_the_same_languages_in_every_column(db):
    """A column evaluated on fewer languages must not be averaged over a different set: the
    default set is what every column has; a chosen set that a column lacks leaves its Avg empty."""
    df = db.results_frame("t")
    df = df[~((df.method == "copsd") & (df.language == "swa"))]  # copsd evaluated on English only
    t = build_table(df, by="language")
    assert t.title.endswith("averages over eng") and t.rows == ["swa", "Avg", "eng"]
    assert t.cells[("Avg", ("M-1B", "base"))].mean == pytest.approx(50.0)
    t = build_table(df, by="language", languages=["swa"])
    assert ("Avg", ("M-1B", "copsd")) not in t.cells and t.cells[("Avg", ("M-1B", "base"))].mean == pytest.approx(15.0)
    with pytest.raises(CopsdError, match="--languages: no results for hau"):
        build_table(df, languages=["hau"])


def test_csv_and_errors(db):
    text = render(build_table(db.results_frame("t")), "csv")
    lines = text.strip().splitlines()
    assert lines[0] == "language,M-1B/base,M-1B/base:std,M-1B/base:delta,M-1B/copsd,M-1B/copsd:std,M-1B/copsd:delta"
    assert lines[1].startswith("swa,15.0000,7.0711,,35.0000,7.0711,20.0000")
    with pytest.raises(CopsdError, match="--by"):
        build_table(db.results_frame("t"), by="planet")
    with pytest.raises(CopsdError, match="no results"):
        build_table(db.results_frame("nonexistent"))


def test_latex_and_html_keep_their_layout_and_numbers(db):
    import re

    t = build_table(db.results_frame("t"), by="language")
    tex = render(t, "latex").splitlines()
    assert tex[:6] == [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{lrr}",
        r"\toprule",
        r"language & M-1B base & M-1B copsd \\",
        r"\midrule",
    ]
    assert tex[6] == r"swa & 15.00 $\pm$ 7.07 & \textbf{35.00 $\pm$ 7.07 (+20.00)} \\"
    assert tex[7] == r"\midrule" and tex[8] == r"Avg & 15.00 $\pm$ 7.07 & \textbf{35.00 $\pm$ 7.07 (+20.00)} \\"
    assert tex[9] == r"eng & \textbf{50.00 $\pm$ 0.00} & 40.00 $\pm$ 0.00 (-10.00) \\"
    assert tex[10:12] == [r"\bottomrule", r"\end{tabular}"] and tex[-1] == r"\end{table}"
    assert tex[12].startswith(r"\caption{accuracy (\%) by language, final checkpoint")  # below the tabular
    page = render(t, "html")
    assert re.search(r"<caption>accuracy \(%\) by language, final checkpoint", page)
    cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", page)
    assert cells == [
        "language", "M-1B base", "M-1B copsd",
        "swa", "15.00 ± 7.07", "<b>35.00 ± 7.07 (+20.00)</b>",
        "Avg", "15.00 ± 7.07", "<b>35.00 ± 7.07 (+20.00)</b>",
        "eng", "<b>50.00 ± 0.00</b>", "40.00 ± 0.00 (-10.00)",
    ]  # fmt: skip
    assert re.findall(r"<th[^>]*>", page) and page.count("<tr") == 4  # a header row and three rows


def test_curves_plot_is_written(db, tmp_path):
    from copsd.reports.curves import plot_curves

    out = plot_curves(db.results_frame("t"), tmp_path / "c.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(CopsdError, match="unknown metric"):
        plot_curves(db.results_frame("t"), tmp_path / "d.png", metric="nope")


def test_curves_start_from_the_base_and_skip_untrained_languages(db):
    from copsd.reports.curves import curve_data

    df = db.results_frame("t")
    data = curve_data(df)
    line = data["swa"][("M-1B", "copsd")]
    assert list(line.step) == [0, 5, 10] and list(line["mean"]) == pytest.approx([15.0, 90.0, 35.0])
    only_swa = curve_data(df[~((df.method == "copsd") & (df.language == "eng"))])
    assert list(only_swa) == ["swa"]  # English has only the base: no empty panel


def test_every_figure_gives_a_method_the_same_colour(db, tmp_path, monkeypatch):
    from matplotlib.colors import to_rgba

    import copsd.reports.curves as curves
    import copsd.reports.figures as figures
    from copsd.reports.figure_style import METHOD_COLORS

    drawn = []
    for module in (curves, figures):
        monkeypatch.setattr(module, "save_figure", lambda fig, out, **kw: drawn.append(fig) or out)
    df = db.results_frame("t")
    curves.plot_curves(df, tmp_path / "c.png")
    figures.repetition(df, tmp_path / "r.png")
    for fig in drawn:
        lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
        assert to_rgba(lines["copsd"].get_color()) == to_rgba(METHOD_COLORS["copsd"])
        assert to_rgba(lines["base"].get_color()) == to_rgba(METHOD_COLORS["base"])


def test_figures_are_written_or_skipped_with_a_reason(db, tmp_path):
    import pandas as pd

    from copsd.reports.figures import pearson_r, write_figures

    df = db.results_frame("t")
    done = write_figures(df, tmp_path, "t")
    for name in ("curves", "delta_bars", "format_vs_accuracy", "repetition"):
        png = done[name].split(" ")[0]
        assert png.endswith(".png") and open(png, "rb").read(4) == b"\x89PNG", name
        assert open(png[:-4] + ".pdf", "rb").read(5) == b"%PDF-", name
    assert done["scaling"].startswith("skipped: results exist at one decoding budget")
    assert "Pearson" not in done["format_vs_accuracy"]  # every format rate is 0 here: r undefined, not drawn
    # a second budget: the test-time scaling figure appears
    more = df.assign(max_new_tokens=512, accuracy=df.accuracy / 2)
    assert write_figures(pd.concat([df, more]), tmp_path, "u")["scaling"].endswith("u_scaling.png")
    assert pearson_r([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson_r([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_reports_escape_what_they_print():
    from copsd.reports.tables import Cell, Table

    t = Table(
        title="acc (%) by language & more",
        row_name="language",
        rows=["x|y_z"],
        columns=[("M_1B", "a&b<i>")],
        cells={("x|y_z", ("M_1B", "a&b<i>")): Cell(12.5, 1.0)},
    )
    md = render(t, "markdown")
    assert "| x\\|y_z |" in md and "12.50 ± 1.00" in md
    tex = render(t, "latex")
    assert r"x|y\_z" in tex and r"M\_1B a\&b<i>" in tex and r"acc (\%) by language \& more" in tex
    assert r"12.50 $\pm$ 1.00" in tex
    html = render(t, "html")
    assert "a&amp;b&lt;i&gt;" in html and "<i>" not in html


def test_best_step_of_a_metric_some_jobs_never_measured(db):
    """Language rates are NULL where nothing was identifiable: such a job has no best checkpoint, so
    it stands at its final one, and the jobs that were measured still get their best."""
    from copsd.reports.tables import select_rows

    df = db.results_frame("t")
    measured = (df.method == "copsd") & (df.language == "swa") & (df.seed == 0)
    df.loc[measured, "target_language_rate"] = df.loc[measured, "step"].map({5: 0.6, 10: 0.2})
    rows = select_rows(df, "target_language_rate", "best")
    assert len(rows) == df.job_id.nunique()  # one row per job, none dropped
    assert rows[measured.reindex(rows.index)].step.tolist() == [5]  # its best, not its final (10)
    others = rows[~measured.reindex(rows.index)]
    final = df.groupby("job_id").step.max()
    assert others.target_language_rate.isna().all() and (others.step == others.job_id.map(final)).all()
