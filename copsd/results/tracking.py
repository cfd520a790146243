"""MLflow logging through `MlflowClient` (explicit run ids, no global active-run state).

One parent run per sweep; one nested run per job (tag `mlflow.parentRunId`) holding the resolved
config as params, tags (method, model, language, seed, job id), evaluation metrics per language
and checkpoint step, per-step training metrics, and artifacts (the config YAML and per-example
generations as JSONL). Where the store is comes from `copsd.paths.Workspace`.

Callers hold a `RunLog` (one MLflow run) and never the client; `NullTracker`/`NullRunLog` do
nothing, so code that logs needs no "is tracking on?" checks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from copsd.config import JobConfig, flatten
from copsd.errors import CopsdError
from copsd.paths import artifact_root
from copsd.redact import display_url, scrub

MAX_PARAM_LEN = 500
# MLflow 3's UI opens an experiment by its kind: model training shows the runs table and charts
# (without the tag it guesses, and opened ours in the GenAI overview)
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


class RunLog:
    """One MLflow run: what a sweep or a job logs to."""

    def __init__(self, client: Any, run_id: str, resumed: bool = False):
        self.client, self.run_id = client, run_id
        # a resumed run already holds steps up to the crash: a step is logged once per key, so
        # steps a resumed job recomputes (after its last checkpoint) are not logged twice
        self._resumed = resumed
        self._last_step: dict[str, int] = {}

    def _already_logged(self, key: str, step: int) -> bool:
        if not self._resumed:
            return False
        if key not in self._last_step:
            try:
                history = self.client.get_metric_history(self.run_id, key)
            except Exception:  # noqa: BLE001 - tracking never fails a job: log it (again) rather than not
                history = []
            self._last_step[key] = max((m.step for m in history), default=-1)
        return step <= self._last_step[key]

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), ts, int(step))
            for k, v in metrics.items()
            if v is not None and not self._already_logged(k, step)  # None: not measured (e.g. language id)
        ]
        for i in range(0, len(batch), 1000):
            chunk = batch[i : i + 1000]
            _retry(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk))

    def set_tag(self, key: str, value: str) -> None:
        _retry(lambda: self.client.set_tag(self.run_id, key, scrub(str(value))[:MAX_PARAM_LEN]))

    def log_jsonl(self, records: list[dict], name: str, artifact_path: str = "generations") -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        _retry(lambda: self.client.log_text(self.run_id, text, f"{artifact_path}/{name}"), attempts=2)

    def log_files(self, paths: list, artifact_path: str) -> None:
        for p in paths:
            _retry(lambda p=p: self.client.log_artifact(self.run_id, str(p), artifact_path), attempts=2)

    def end(self, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED."""
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception:
            pass


class NullRunLog(RunLog):
    """Logging switched off (--no-mlflow): every call does nothing."""

    def __init__(self) -> None:
        super().__init__(None, "")

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        pass

    def set_tag(self, key: str, value: str) -> None:
        pass

    def log_jsonl(self, records: list[dict], name: str, artifact_path: str = "generations") -> None:
        pass

    def log_files(self, paths: list, artifact_path: str) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def _retry(call, attempts: int = 5) -> None:
    """An MLflow write that collided with another process's write to the same run (processes
    started together share the sweep's run) is retried; tracking never stops a sweep."""
    for i in range(attempts):
        try:
            call()
            return
        except Exception as exc:  # noqa: BLE001 - MlflowException wraps the store's errors
            if i == attempts - 1:
                logging.getLogger("copsd").warning("MLflow write failed, skipped: %s", scrub(str(exc).splitlines()[0]))
                return
            time.sleep(0.05 * (i + 1))


@contextlib.contextmanager
def _fail_fast(tracking_uri: str):
    """During the first request to a tracking server: no retries, a 10 s timeout, so a server that
    is down fails in seconds, not minutes (values the user set win; restored afterwards, so later
    logging keeps MLflow's patient defaults)."""
    if not tracking_uri.startswith(("http://", "https://")):
        yield
        return
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    set_here = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in set_here})
    try:
        yield
    finally:
        for k in set_here:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _store_lock(tracking_uri: str):
    """An exclusive lock beside a local SQLite MLflow store while it is set up (creating the file
    runs MLflow's migrations, which are not safe to run from several processes at once)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(tracking_uri[len("sqlite:///") :])
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if not path.exists():
                _create_store_atomically(path)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _create_store_atomically(path: Path) -> None:
    """Build a new SQLite MLflow store under a temp name and rename it into place: MLflow's schema
    migrations are not one transaction, so a process killed while they run would otherwise leave
    a half-made store that every later run fails to open."""
    from mlflow.tracking import MlflowClient

    for old in path.parent.glob(f".{path.name}.init-*"):  # a killed earlier attempt
        old.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.init-{os.getpid()}")
    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)  # runs the migrations
    os.replace(tmp, path)


def _store_refused(tracking_uri: str, exc: Exception) -> str:
    """One line for a store MLflow will not open. The common case is a `./mlruns` or `file:` URI:
    MLflow 3 refuses its file store unless told otherwise, and copsd's default is SQLite."""
    text = str(exc).strip()
    why = scrub(text.splitlines()[0].split(". ")[0][:200]) if text else type(exc).__name__
    if "://" not in tracking_uri or tracking_uri.startswith("file:"):
        fix = "use a database store, e.g. MLFLOW_TRACKING_URI=sqlite:///mlflow.db (or MLFLOW_ALLOW_FILE_STORE=true)"
    else:
        fix = "fix MLFLOW_TRACKING_URI"
    return f"MLflow store {display_url(tracking_uri)} cannot be opened ({why}); {fix}, or run with --no-mlflow"


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str = "copsd"):
        from mlflow.tracking import MlflowClient

        for name in ("alembic", "mlflow"):  # MLflow's store setup logs at INFO on every new DB
            logging.getLogger(name).setLevel(logging.WARNING)

        self.uri = tracking_uri
        with _store_lock(tracking_uri), _fail_fast(tracking_uri):  # MLflow's schema setup races at a common start
            try:
                self.client = MlflowClient(tracking_uri=tracking_uri)
            except Exception as exc:  # noqa: BLE001 - MLflow refuses the URI itself (file stores, bad schemes)
                raise CopsdError(_store_refused(tracking_uri, exc)) from None
            try:
                exp = self.client.get_experiment_by_name(experiment)
            except Exception as exc:  # noqa: BLE001 - connection refused, DNS, TLS, HTTP errors
                raise CopsdError(
                    f"MLflow at {display_url(tracking_uri)} is unreachable ({type(exc).__name__}); start it, fix "
                    "MLFLOW_TRACKING_URI, or run with --no-mlflow"
                ) from None
        self._init_experiment(exp, experiment, tracking_uri)

    def _init_experiment(self, exp, experiment: str, tracking_uri: str) -> None:
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifact_root(tracking_uri), tags={EXPERIMENT_KIND: MODEL_TRAINING}
                )
            except Exception:  # created meanwhile by another worker
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND not in exp.tags:  # made by an older copsd: open it in the runs view too
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)

    def _alive(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:
            return False

    def sweep_run(self, sweep: str, existing: str | None = None, description: str = "") -> RunLog:
        if existing and self._alive(existing):
            self.client.update_run(existing, status="RUNNING")
            return RunLog(self.client, existing)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"sweep:{sweep}",
            tags={"copsd.kind": "sweep", "copsd.sweep": sweep, "mlflow.note.content": description},
        )
        return RunLog(self.client, run.info.run_id)

    def adopt(self, mine: RunLog, winner: str) -> RunLog:
        """Drop the sweep run this process just made in favour of the one recorded first."""
        with contextlib.suppress(Exception):
            self.client.delete_run(mine.run_id)
        return RunLog(self.client, winner)

    def job_run(
        self, job: JobConfig, parent_run_id: str | None, existing: str | None = None, sweep: str | None = None
    ) -> RunLog:
        """The job's nested run (reused across retries, so curves continue in one place)."""
        if not (existing and self._alive(existing)):
            existing = self._find_job_run(job.job_id)  # a crash between creating the run and recording it
        if existing and self._alive(existing):
            self.client.update_run(existing, status="RUNNING")
            return RunLog(self.client, existing, resumed=True)
        tags = {
            "copsd.kind": "job",
            "copsd.job_id": job.job_id,
            "method": job.method,
            "model": job.model,
            "language": job.language,
            "seed": str(job.seed),
            "benchmark": job.eval.benchmark,
        }
        if sweep:
            tags["copsd.sweep"] = sweep
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{job.label}:{job.job_id}", tags=tags)
        rid = run.info.run_id
        self._log_params(rid, job)
        self.client.log_text(rid, job.to_yaml(), "config.yaml")
        return RunLog(self.client, rid)

    def _find_job_run(self, job_id: str) -> str | None:
        """The job's run, if one exists that the results DB does not know of (one run per job)."""
        try:
            runs = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`copsd.job_id` = '{job_id}'", max_results=1
            )
        except Exception:
            return None
        return runs[0].info.run_id if runs else None

    def _log_params(self, run_id: str, job: JobConfig) -> None:
        from mlflow.entities import Param

        items = flatten(job.model_dump(mode="json"))
        items["job_id"] = job.job_id
        params = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in sorted(items.items())]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i : i + 100])


class NullTracker(Tracker):
    """MLflow switched off: runs are `NullRunLog`s with empty ids."""

    def __init__(self) -> None:
        self.uri, self.experiment_id = "", ""
        self.client: Any = None

    def sweep_run(self, sweep: str, existing: str | None = None, description: str = "") -> RunLog:
        return NullRunLog()

    def job_run(
        self, job: JobConfig, parent_run_id: str | None, existing: str | None = None, sweep: str | None = None
    ) -> RunLog:
        return NullRunLog()
