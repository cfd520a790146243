"""The results database schema (SQLAlchemy 2.x), in one place.

    sweeps      one row per sweep spec name (the spec text it was last run with, its MLflow parent run)
    jobs        one row per job id (hash of the resolved config): status, attempts, errors, heartbeat
    sweep_jobs  which jobs a sweep contains (a job can belong to several sweeps; results are shared)
    results     one row per (job, benchmark, language, split, checkpoint step, decoding budget)
    meta        key/value; `schema_version` drives the migrations in `copsd.results.db`

Bump SCHEMA_VERSION and add a migration in `copsd.results.migrations.MIGRATIONS` when you change a table.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import NamedTuple

from sqlalchemy import DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 4  # v2: jobs.provenance_json, results' per-grader columns; v3: jobs.owner;
# v4: results' language-identification columns

PENDING, RUNNING, DONE, FAILED = "PENDING", "RUNNING", "DONE", "FAILED"
STATUSES = (PENDING, RUNNING, DONE, FAILED)

METRIC_COLUMNS = (
    "accuracy",
    "pass_at_1",
    "pass_at_k",
    "maj_at_k",
    "format_rate",
    "mean_length",
    "truncation_rate",
    "repetition_2",
    "repetition_3",
    "repetition_4",
    "repetition_5",
    "repetition_6",
    "repetition_rate",
)
# One evaluation grades every sample with both graders (copsd.grading); the columns above hold
# the job's `eval.grader`, these hold each grader's own values (NULL in rows written before v2).
GRADER_COLUMNS = (
    "accuracy_paper",
    "pass_at_k_paper",
    "maj_at_k_paper",
    "accuracy_lenient",
    "pass_at_k_lenient",
    "maj_at_k_lenient",
)


# Which language the responses are written in (copsd.evaluation.language_id): shares of letters
# in the target language / English over the whole response, its thinking part and its answer
# part; shares of samples whose dominant language is the target / English; accuracy within each.
# NULL where nothing was identifiable, for an unsupported target, and in rows written before v4.
LANGUAGE_COLUMNS = (
    "target_language_rate",
    "english_rate",
    "target_language_rate_think",
    "english_rate_think",
    "target_language_rate_answer",
    "english_rate_answer",
    "target_dominant_rate",
    "english_dominant_rate",
    "accuracy_target_dominant",
    "accuracy_english_dominant",
)
# what `copsd report table --metric` accepts
REPORT_METRICS = (*METRIC_COLUMNS, *LANGUAGE_COLUMNS)


class ResultKey(NamedTuple):
    """What makes a result row unique within its job (with `job_id`: the table's unique key)."""

    benchmark: str
    language: str
    split: str
    step: int
    max_new_tokens: int  # the decoding budget the row was graded at


RESULT_UNIQUE = ("job_id", *ResultKey._fields)


def utcnow() -> datetime:
    """Naive UTC (SQLite keeps no time zone; every timestamp in the DB is UTC)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SweepRow(Base):
    __tablename__ = "sweeps"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    spec_path: Mapped[str | None] = mapped_column(Text)
    spec_yaml: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    method: Mapped[str] = mapped_column(String(16), index=True)
    model: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(16), index=True)
    seed: Mapped[int] = mapped_column(Integer)
    config_json: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    # what the job was made with: versions, git commit, device, prompt and data fingerprints
    provenance_json: Mapped[str | None] = mapped_column(Text)
    # the claim's owner token (host|pid|process start|random): heartbeats, results and the final
    # status are written only while it still matches (a fenced update)
    owner: Mapped[str | None] = mapped_column(String(255))


class SweepJob(Base):
    __tablename__ = "sweep_jobs"
    sweep_name: Mapped[str] = mapped_column(ForeignKey("sweeps.name", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class ResultRow(Base):
    __tablename__ = "results"
    __table_args__ = (UniqueConstraint(*RESULT_UNIQUE, name="uq_result"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    benchmark: Mapped[str] = mapped_column(String(32))
    language: Mapped[str] = mapped_column(String(16))
    split: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(Integer)
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    n_samples: Mapped[int] = mapped_column(Integer)
    n_problems: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    pass_at_1: Mapped[float] = mapped_column(Float)
    pass_at_k: Mapped[float] = mapped_column(Float)
    maj_at_k: Mapped[float] = mapped_column(Float)
    format_rate: Mapped[float] = mapped_column(Float)
    mean_length: Mapped[float] = mapped_column(Float)
    truncation_rate: Mapped[float] = mapped_column(Float)
    repetition_2: Mapped[float] = mapped_column(Float)
    repetition_3: Mapped[float] = mapped_column(Float)
    repetition_4: Mapped[float] = mapped_column(Float)
    repetition_5: Mapped[float] = mapped_column(Float)
    repetition_6: Mapped[float] = mapped_column(Float)
    repetition_rate: Mapped[float] = mapped_column(Float)
    accuracy_paper: Mapped[float | None] = mapped_column(Float)
    pass_at_k_paper: Mapped[float | None] = mapped_column(Float)
    maj_at_k_paper: Mapped[float | None] = mapped_column(Float)
    accuracy_lenient: Mapped[float | None] = mapped_column(Float)
    pass_at_k_lenient: Mapped[float | None] = mapped_column(Float)
    maj_at_k_lenient: Mapped[float | None] = mapped_column(Float)
    target_language_rate: Mapped[float | None] = mapped_column(Float)
    english_rate: Mapped[float | None] = mapped_column(Float)
    target_language_rate_think: Mapped[float | None] = mapped_column(Float)
    english_rate_think: Mapped[float | None] = mapped_column(Float)
    target_language_rate_answer: Mapped[float | None] = mapped_column(Float)
    english_rate_answer: Mapped[float | None] = mapped_column(Float)
    target_dominant_rate: Mapped[float | None] = mapped_column(Float)
    english_dominant_rate: Mapped[float | None] = mapped_column(Float)
    accuracy_target_dominant: Mapped[float | None] = mapped_column(Float)
    accuracy_english_dominant: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
