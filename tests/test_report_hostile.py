"""Reports against hostile input (issue 27): any string a results DB can hold renders in every
format (figures, Markdown, LaTeX, CSV, HTML, the terminal table) as written and never as markup;
a bad output target is refused with one line before anything is written; a failed write is one
line naming the file; a sweep whose jobs all failed gets a report of its failures; no DB password
reaches a report. Everything runs for real: the console program, matplotlib, files, SQLite."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_cli

from copsd.config import JobConfig
from copsd.results import ResultsDB
from copsd.results.schema import DONE, FAILED, METRIC_COLUMNS

# names as a results DB may hold them (model directories and languages are the user's)
MODELS = ["/tmp/a$b/m$_^$", "<img src=x onerror=alert(1)>", "/models/x|y_z^w\\v$c$ [/x]"]
LANGS = {"swa": "sw[/b]$\\a_1$", "eng": "eng"}  # job language -> the result's language string
FAILED_ERROR = "bad <img src=x onerror=alert(2)> | $x_{$ input"


def _metrics(acc: float) -> dict:
    return {**{c: 0.1 for c in METRIC_COLUMNS}, "accuracy": acc, "format_rate": acc + 0.1}


def _hostile_db(url: str, sweep: str = "s$w") -> None:
    db = ResultsDB(url)
    for model in MODELS:
        for method, step, acc in (("base", 0, 0.3), ("copsd", 10, 0.5)):
            for lang, shown in LANGS.items():
                j = JobConfig(method=method, model=model, language=lang, seed=0, eval={"benchmark": "mgsm"})
                db.register_sweep(sweep, [j])
                db.add_result(
                    j.job_id, benchmark="mgsm", language=shown, split="test", step=step, max_new_tokens=16,
                    n_samples=2, n_problems=5, metrics=_metrics(acc),
                )  # fmt: skip
                db.finish(j.job_id, DONE, owner=db.claim(j.job_id, max_attempts=1, stale_after_s=60))
    bad = JobConfig(method="sft", model=MODELS[1], language="swa", seed=3, eval={"benchmark": "mgsm"})
    db.register_sweep(sweep, [bad])
    db.finish(bad.job_id, FAILED, FAILED_ERROR, owner=db.claim(bad.job_id, max_attempts=1, stale_after_s=60))
    db.close()


def _all_failed_db(url: str, sweep: str = "broken") -> list[str]:
    db = ResultsDB(url)
    ids = []
    for lang, error in (("swa", "model dir /m/x: no config.json <b>bold</b>"), ("eng", "out of memory; lower x")):
        j = JobConfig(method="copsd", model="builtin:tiny-qwen3", language=lang, eval={"benchmark": "mgsm"})
        db.register_sweep(sweep, [j])
        db.finish(j.job_id, FAILED, error, owner=db.claim(j.job_id, max_attempts=1, stale_after_s=60))
        ids.append(j.job_id)
    db.close()
    return ids


def _clis(calls: list[list[str]], cwd: Path, **popen) -> list[subprocess.CompletedProcess]:
    """Several runs of the real console program at once (the start-up dominates each)."""
    env = {**os.environ, "COLUMNS": "400"}  # the terminal table on one line per row
    procs = [
        (args, subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, text=True, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen))
        for args in calls
    ]  # fmt: skip
    out = []
    for args, p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def _one_line_error(r: subprocess.CompletedProcess, code: int = 2) -> str:
    err = r.stderr.strip()
    assert r.returncode == code, (r.args, r.returncode, r.stdout[-2000:], err[-2000:])
    assert len(err.splitlines()) == 1 and err.startswith("error:"), (r.args, err)
    assert "unexpected" not in err and "Traceback" not in err, (r.args, err)
    return err


def _tree(p: Path) -> set[str]:
    return {str(x.relative_to(p)) for x in p.rglob("*")}


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_any_string_renders_in_every_format(tmp_path):
    """`$`, `_`, `^`, `\\`, `|`, `[/x]` and HTML in model names, languages and the sweep name:
    figures (mathtext would fail on `m$_^$`), the terminal table (rich markup would fail on
    `[/b]`), Markdown, LaTeX, CSV and HTML all render, and `<img` never appears raw."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _hostile_db(url)
    md, page, figs = tmp_path / "t.md", tmp_path / "page.html", tmp_path / "figs"
    table, html, figures = _clis(
        [
            ["report", "table", "--sweep", "s$w", "--db", url, "--out", str(md)],
            ["report", "html", "--sweep", "s$w", "--db", url, "--out", str(page)],
            ["report", "figures", "--sweep", "s$w", "--db", url, "--out-dir", str(figs)],
        ],
        cwd=tmp_path,
    )
    for r in (table, html, figures):
        assert r.returncode == 0, (r.args, r.stdout[-3000:], r.stderr[-3000:])
        assert "unexpected" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    for name in ("curves_accuracy", "delta_bars", "format_vs_accuracy", "repetition"):
        png = figs / f"s$w_{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-", name
    assert "sw[/b]$\\a_1$" in table.stdout and "m$_^$ copsd" in table.stdout  # the terminal table, as written

    text = md.read_text(encoding="utf-8")
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt; base" in text
    assert "m\\$\\_^\\$ copsd" in text and "sw\\[/b\\]\\$\\\\a_1\\$" in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert {line.count("|") - line.count("\\|") for line in rows} == {len(rows[0].split(" | ")) + 1}  # no cell split

    body = page.read_text(encoding="utf-8")
    assert "<img src=x" not in body and "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "&lt;img src=x onerror=alert(2)&gt;" in body and 'id="failures"' in body  # the failed job, escaped
    assert body.count("<img ") == 4  # the four figures drawn, nothing else

    from copsd.reports.table_formats import render
    from copsd.reports.tables import side_by_side

    df = ResultsDB(url).results_frame("s$w")
    t = side_by_side(df, ["accuracy"], by="language")
    tex = render(t, "latex")
    assert r"m\$\_\textasciicircum{}\$ copsd" in tex and r"sw[/b]\$\textbackslash{}a\_1\$" in tex
    html_table = render(t, "html")
    assert "<img" not in html_table and "&lt;img src=x onerror=alert(1)&gt; base" in html_table
    assert "m$_^$/copsd" in render(t, "csv")


def test_names_with_newlines_and_formulas_stay_in_their_cell():
    from copsd.reports.table_formats import render
    from copsd.reports.tables import Cell, Table

    t = Table(
        title="acc",
        row_name="language",
        rows=["a\nb", "=cmd|' /C calc'!A0"],
        columns=[("-m\r\n|x", "base")],
        cells={("a\nb", ("-m\r\n|x", "base")): Cell(1.0), ("=cmd|' /C calc'!A0", ("-m\r\n|x", "base")): Cell(2.0)},
    )
    md = render(t, "markdown").splitlines()
    assert md[2] == "| language | -m  \\|x base |" and md[4] == "| a b | 1.00 |"
    csv_lines = render(t, "csv").splitlines()
    assert (
        len(csv_lines) == 3
        and csv_lines[0].startswith("language,'-m  |x/base,")
        and csv_lines[2].startswith("'=cmd|' /C calc'!A0,")
    )  # text, not a formula
    assert "\n\n" not in render(t, "latex")


def _fifo(w: Path) -> None:
    os.mkfifo(w / "out" / "fifo.md")


def _figures_dir_in_the_way(w: Path) -> None:
    (w / "out" / "p_figures").write_text("a file")


def _link_to_dev_full(w: Path) -> None:
    (w / "out" / "link.md").symlink_to("/dev/full")


# id, setup, argv after `report` (OUT = tmp_path/out), message fragments
BAD_TARGETS = [
    ("table-out-is-a-directory", None, ["table", "--out", "OUT/adir"], ["is a directory", "table.md"]),
    ("html-out-is-a-directory", None, ["html", "--out", "OUT/adir"], ["is a directory", "report.html"]),
    ("curves-out-is-a-directory", None, ["curves", "--out", "OUT/adir.png"], ["is a directory"]),
    ("curves-out-not-png", None, ["curves", "--out", "OUT/c.txt"], ["give a .png path"]),
    ("figures-out-dir-is-a-file", None, ["figures", "--out-dir", "OUT/afile"], ["not a directory"]),
    ("table-parent-is-a-file", None, ["table", "--out", "OUT/afile/t.md"], ["afile is not a directory"]),
    ("table-under-proc", None, ["table", "--out", "/proc/self/t.md"], ["device or kernel file system"]),
    ("figures-under-proc", None, ["figures", "--out-dir", "/proc/copsd-figs"], ["device or kernel file system"]),
    ("table-dev-full", None, ["table", "--out", "/dev/full"], ["/dev/full", "device or kernel file system"]),
    ("html-dev-full", None, ["html", "--out", "/dev/full"], ["/dev/full", "device or kernel file system"]),
    ("curves-dev-full", None, ["curves", "--out", "/dev/full.png"], ["device or kernel file system"]),
    ("figures-dev-full", None, ["figures", "--out-dir", "/dev/full"], ["device or kernel file system"]),
    ("table-symlink-to-dev-full", _link_to_dev_full, ["table", "--out", "OUT/link.md"], ["(/dev/full)"]),
    ("table-fifo", _fifo, ["table", "--out", "OUT/fifo.md"], ["not a regular file"]),
    (
        "html-figures-dir-is-a-file",
        _figures_dir_in_the_way,
        ["html", "--out", "OUT/p.html"],
        ["p_figures is in the way"],
    ),
]


def test_bad_out_targets_are_refused_before_anything_is_written(tmp_path):
    """Each bad target: one line, exit 2, before the DB is read or any file or folder is made
    (no `/dev/full_figures/` beside a device)."""
    (tmp_path / "db").mkdir()
    url = f"sqlite:///{tmp_path / 'db' / 'r.db'}"
    _hostile_db(url, sweep="s")
    out = tmp_path / "out"
    out.mkdir()
    (out / "adir").mkdir()
    (out / "adir.png").mkdir()
    (out / "afile").write_text("a file")
    for _, setup, _, _ in BAD_TARGETS:
        if setup:
            setup(tmp_path)
    before, db_before = _tree(out), _digest(tmp_path / "db" / "r.db")
    full_before = {p.name for p in Path("/dev").iterdir() if p.name.startswith("full")}
    calls = [["report", *[a.replace("OUT", str(out)) for a in argv], "--db", url] for _, _, argv, _ in BAD_TARGETS]
    for (name, _, _, fragments), r in zip(BAD_TARGETS, _clis(calls, cwd=tmp_path)):
        err = _one_line_error(r)
        for f in fragments:
            assert f in err, (name, f, err)
    assert _tree(out) == before and (out / "afile").read_text() == "a file"
    assert _digest(tmp_path / "db" / "r.db") == db_before
    assert {p.name for p in Path("/dev").iterdir() if p.name.startswith("full")} == full_before
    assert not Path("/dev/full_figures").exists() and not Path("/dev/full.pdf").exists()
    # a parent that does not exist yet is created, as reports/ beside the DB is
    r = run_cli("report", "table", "--db", url, "--out", str(out / "new" / "deeper" / "t.md"), cwd=tmp_path)
    assert r.returncode == 0 and (out / "new" / "deeper" / "t.md").is_file(), r.stderr


def _file_size_limit(limit: int):
    def apply() -> None:  # the kernel then fails writes past `limit` bytes with EFBIG, as a full disk does
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_write_that_fails_is_one_line_naming_the_file(tmp_path):
    """A write the kernel refuses (here a file-size limit, EFBIG, as ENOSPC on a full disk):
    one line naming the file, exit 2, and neither half a file nor a temporary one left behind."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    db = ResultsDB(url)
    j = JobConfig(method="base", model="/models/" + "m" * 150_000, language="swa", eval={"benchmark": "mgsm"})
    db.register_sweep("big", [j])
    db.add_result(
        j.job_id, benchmark="mgsm", language="swa", split="test", step=0, max_new_tokens=16, n_samples=1,
        n_problems=5, metrics=_metrics(0.3),
    )  # fmt: skip
    db.close()
    out = tmp_path / "out"
    out.mkdir()
    (out / "t.md").write_text("the earlier table\n")
    calls = [
        ["report", "table", "--db", url, "--out", str(out / "t.md")],  # > 300 kB: two columns named by the model
        ["report", "html", "--db", url, "--out", str(out / "p.html")],
    ]
    table, html = _clis(calls, cwd=tmp_path, preexec_fn=_file_size_limit(100_000))
    for r, path in ((table, out / "t.md"), (html, out / "p.html")):
        err = _one_line_error(r)
        assert f"cannot write {path}: File too large" in err and "free some space" in err, err
    assert (out / "t.md").read_text() == "the earlier table\n"  # the earlier report stays whole
    assert not (out / "p.html").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_a_sweep_whose_jobs_all_failed_gets_a_report_of_its_failures(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ids = _all_failed_db(url)
    page = tmp_path / "p.html"
    table, html, figures = _clis(
        [
            ["report", "table", "--sweep", "broken", "--db", url, "--out", str(tmp_path / "t.md")],
            ["report", "html", "--sweep", "broken", "--db", url, "--out", str(page)],
            ["report", "figures", "--sweep", "broken", "--db", url, "--out-dir", str(tmp_path / "figs")],
        ],
        cwd=tmp_path,
    )
    # the table: a one-line notice, then each failed job with its error; exit 1, nothing written
    assert table.returncode == 1, (table.stdout, table.stderr)
    assert table.stderr.strip() == "no results for this selection: 2 of 2 job(s) FAILED, nothing written:"
    lines = table.stdout.strip().splitlines()
    assert len(lines) == 2 and all(any(line.startswith(i) for line in lines) for i in ids), lines
    assert "no config.json <b>bold</b>" in table.stdout and "out of memory; lower x" in table.stdout
    assert "run a sweep first" not in table.stdout + table.stderr and not (tmp_path / "t.md").exists()
    # the page: a failures section with every job's error (escaped)
    assert html.returncode == 0, html.stderr
    body = page.read_text(encoding="utf-8")
    assert 'id="failures"' in body and "2 of 2 job(s) FAILED" in body and all(i in body for i in ids)
    assert "no config.json &lt;b&gt;bold&lt;/b&gt;" in body and "<b>bold" not in body
    assert "run a sweep first" not in body and "no results yet" in body
    # figures cannot be drawn: one line that says why and where the failures are listed
    err = _one_line_error(figures)
    assert "2 of 2 job(s) FAILED" in err and ids[0] in err and "copsd report html" in err
    assert not (tmp_path / "figs").exists()


def test_the_html_report_never_shows_a_db_password(tmp_path):
    import pandas as pd

    from copsd.reports.html_report import write_html_report

    url = f"sqlite:///{tmp_path / 'r.db'}"
    _all_failed_db(url)
    db = ResultsDB(url)
    jobs = db.jobs(sweep="broken")
    db.close()
    page = write_html_report(
        pd.DataFrame(), jobs, tmp_path / "p.html", title="t", source="postgresql+psycopg://me:S3cr3tPW@db.example/x"
    )
    body = page.read_text(encoding="utf-8")
    assert "S3cr3tPW" not in body and "postgresql+psycopg://me:***@db.example/x" in body


def test_reports_over_a_password_db_url_never_print_the_password(tmp_path, postgres):
    from services import add_password_user

    secret = "Pw-for-reports-27"
    url = add_password_user(postgres, "reporter27", secret)
    _all_failed_db(url)
    page = tmp_path / "p.html"
    runs = _clis(
        [
            ["report", "html", "--sweep", "broken", "--db", url, "--out", str(page)],
            ["report", "table", "--sweep", "nope", "--db", url, "--out", str(tmp_path / "t.md")],
            ["report", "table", "--sweep", "broken", "--db", url, "--out", str(tmp_path / "t.md")],
        ],
        cwd=tmp_path,
    )
    assert runs[0].returncode == 0, runs[0].stderr
    assert "no sweep named 'nope'" in _one_line_error(runs[1])
    assert runs[2].returncode == 1
    body = page.read_text(encoding="utf-8")
    assert "reporter27:***@" in body
    for text in (body, *(r.stdout + r.stderr for r in runs)):
        assert secret not in text
