"""Screenshots for the docs: the HTML report and MLflow's runs view of a finished demo sweep.

    cd <dir with experiments.db and mlflow.db> && python /path/to/scripts/screenshots.py OUT_DIR

Needs Debian's `chromium` (headless). Starts `mlflow server` on a free 127.0.0.1 port for the
directory's mlflow.db, waits for it, takes `mlflow_runs.png` of the experiment's runs view, and
`report_html.png` of `reports/demo_report.html` (made first with `copsd report html`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shoot(url: str, out: Path, size: str = "1400,900", wait_ms: int = 15000) -> None:
    exe = shutil.which("chromium") or sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", "--hide-scrollbars",
             f"--window-size={size}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
    print(f"written {out}")


def main(out_dir: str) -> None:
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "copsd", "report", "html", "--sweep", "demo"], check=True)
    shoot(Path("reports/demo_report.html").resolve().as_uri(), out / "report_html.png", "1200,2200", 3000)
    port = _port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", "sqlite:///mlflow.db", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(base).get_experiment_by_name("copsd")
        # MLflow 3.17 lands on its GenAI overview whatever the experiment's kind tag: /runs is the table
        shoot(f"{base}/#/experiments/{exp.experiment_id}/runs", out / "mlflow_runs.png", "1500,900")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
