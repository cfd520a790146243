"""`copsd report html`: one self-contained page, opened in a real headless Chromium (Debian
`chromium`, installed by the test run where missing): the tables and every figure render, and
what the database holds is shown as text, never run as markup."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import run_cli
from services import debian_tool

from copsd.config import JobConfig
from copsd.results import ResultsDB
from copsd.results.schema import DONE, FAILED, METRIC_COLUMNS


def _fill(db: ResultsDB) -> None:
    jobs = {}
    for method, lang, seed, step, acc in [
        ("base", "synlo", 0, 0, 0.40),
        ("base", "eng", 0, 0, 0.75),
        ("copsd", "synlo", 0, 10, 0.55),
        ("copsd", "synlo", 0, 20, 0.65),
        ("copsd", "synlo", 1, 20, 0.61),
        ("sft", "synlo", 0, 20, 0.50),
    ]:
        j = jobs.setdefault((method, lang, seed), JobConfig(
            method=method, model="builtin:testbed", language=lang, seed=seed,
            eval={"benchmark": "testbed", "checkpoints": [10, 20], "budgets": [16]},
        ))  # fmt: skip
        db.register_sweep("page", [j])
        for budget, scale in ((16, 0.5), (1024, 1.0)):
            db.add_result(
                j.job_id, benchmark="testbed", language=lang, split="test", step=step, max_new_tokens=budget,
                n_samples=1, n_problems=200,
                metrics={**{c: 0.1 for c in METRIC_COLUMNS}, "accuracy": acc * scale, "format_rate": acc + 0.2},
            )  # fmt: skip
    for j in jobs.values():
        db.finish(j.job_id, DONE, owner=db.claim(j.job_id, max_attempts=1, stale_after_s=60))
        db.set_provenance(j.job_id, {"copsd_version": "0.3.0", "device": "cpu", "eval_data": "ab12"})
    broken = JobConfig(method="grpo", model="builtin:testbed", language="synlo", eval={"benchmark": "testbed"})
    db.register_sweep("page", [broken])
    owner = db.claim(broken.job_id, max_attempts=1, stale_after_s=60)
    db.finish(broken.job_id, FAILED, "bad <script>alert(1)</script> input", owner=owner)


def _chromium(*args: str, cwd) -> subprocess.CompletedProcess:
    exe = debian_tool("chromium", "chromium")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={cwd / 'chrome'}"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.slow
@pytest.mark.service
def test_html_report_renders_tables_and_every_figure_in_chromium(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    db = ResultsDB(url)
    _fill(db)
    db.close()
    page = tmp_path / "page.html"
    r = run_cli("report", "html", "--sweep", "page", "--db", url, "--out", str(page), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    text = page.read_text(encoding="utf-8")
    assert "http" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text).replace(
        "http-equiv", ""
    )  # self-contained: nothing fetched
    dom = _chromium("--dump-dom", "--virtual-time-budget=10000", page.as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    figures = re.search(r'data-figures="(\d+)"', body)
    loaded = re.search(r'data-figures-loaded="(\d+)"', body)
    assert figures and loaded, f"the page's load check did not run: {body!r}"
    # curves, gain bars, format vs accuracy, repetition, test-time scaling (two budgets): all decoded
    assert figures.group(1) == loaded.group(1) == "5", body
    for caption in ("<caption>accuracy (%) by language", "<caption>format_rate (%)", "<caption>Jobs (6)"):
        assert caption in dom.stdout, caption
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout and "<script>alert" not in dom.stdout
    assert "<b>copsd_version</b>: 0.3.0" in dom.stdout and "ab12" not in dom.stdout  # fingerprints stay in the DB
    assert 'id="broken" hidden' in dom.stdout  # no "figure(s) failed to load" warning shown
    shot = tmp_path / "shot.png"
    r = _chromium(f"--screenshot={shot}", "--window-size=1100,1600", "--hide-scrollbars", page.as_uri(), cwd=tmp_path)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1100) and pixels.std() > 10  # drawn, not a blank page
