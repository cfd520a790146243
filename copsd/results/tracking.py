"""MLflow logging through `MlflowClient` (explicit run ids, no global active-run state).

One parent run per sweep; one nested run per job (tag `mlflow.parentRunId`) holding the resolved
config as params, tags (method, model, language, seed, job id), evaluation metrics per language
and checkpoint step, per-step training metrics, and artifacts (the config YAML and per-example
generations as JSONL). Where the store is comes from `copsd.paths.Workspace`.

Callers hold a `RunLog` (one MLflow run) and never the client; `NullTracker`/`NullRunLog` do
nothing, so code that logs needs no "is tracking on?" checks.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from copsd.config import JobConfig, flatten
from copsd.paths import artifact_root

MAX_PARAM_LEN = 500
# MLflow 3's UI opens an experiment by its kind: model training shows the runs table and charts
# (without the tag it guesses, and opened ours in the GenAI overview)
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


class RunLog:
    """One MLflow run: what a sweep or a job logs to."""

    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, str(value)[:MAX_PARAM_LEN])

    def log_jsonl(self, records: list[dict], name: str, artifact_path: str = "generations") -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            with open(p, "w", encoding="utf-8") as fh:
                for r in records:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            self.client.log_artifact(self.run_id, str(p), artifact_path)

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

    def end(self, status: str = "FINISHED") -> None:
        pass


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str = "copsd"):
        from mlflow.tracking import MlflowClient

        for name in ("alembic", "mlflow"):  # MLflow's store setup logs at INFO on every new DB
            logging.getLogger(name).setLevel(logging.WARNING)

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
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

    def job_run(
        self, job: JobConfig, parent_run_id: str | None, existing: str | None = None, sweep: str | None = None
    ) -> RunLog:
        """The job's nested run (reused across retries, so curves continue in one place)."""
        if existing and self._alive(existing):
            self.client.update_run(existing, status="RUNNING")
            return RunLog(self.client, existing)
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
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "config.yaml"
            p.write_text(job.to_yaml(), encoding="utf-8")
            self.client.log_artifact(rid, str(p))
        return RunLog(self.client, rid)

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
