"""The layout holds: no import cycle, no upward import, and the core never imports the testbed.

Read from the package's own source (every import statement, also those inside functions) by
scripts/import_graph.py; docs/design.md draws the same layers."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
ig = importlib.util.module_from_spec(spec)
sys.modules["import_graph"] = ig
spec.loader.exec_module(ig)


def test_no_import_cycles_between_modules_or_packages():
    g = ig.graph()
    assert ig.cycles(g) == []
    assert ig.cycles(ig.package_graph(g)) == []


def test_every_import_goes_down_the_layers():
    assert ig.upward_imports(ig.graph()) == []


def test_core_never_imports_the_testbed():
    g = ig.graph()
    offenders = [
        f"{m} -> {d}"
        for m, deps in g.items()
        for d in deps
        if d.startswith("copsd.testbed") and not m.startswith("copsd.testbed")
    ]
    assert offenders == []


def test_every_unit_has_a_layer():
    for u in ig.package_graph(ig.graph()):
        ig.layer_of(u)  # raises for a new package nobody placed


def test_the_checker_sees_cycles_and_upward_imports(tmp_path):
    """The checks can fail: a tiny package with a cycle and an upward import is caught."""
    pkg = tmp_path / "copsd"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from copsd.data import x\n")
    (pkg / "data" / "__init__.py").write_text("def f():\n    from copsd.errors import E\n")
    g = ig.graph(pkg)
    assert ig.cycles(g) == [["copsd.data", "copsd.errors"]]
    assert ig.upward_imports(g) == ["copsd.errors -> copsd.data"]


# Calls that write to the results DB (ResultsDB's methods) and to MLflow (RunLog, Tracker and
# MlflowClient methods). Each module may make calls of one kind only: the job's rows go through
# run/db_sink.py, its MLflow run through run/mlflow_sink.py, and the recorder only dispatches.
DB_WRITES = {
    "add_result", "set_provenance", "claim", "finish", "release", "heartbeat", "register_sweep",
    "set_job_mlflow_run", "set_sweep_mlflow_run", "reset", "reset_orphan",
}  # fmt: skip
MLFLOW_WRITES = {
    "set_tag", "log_metrics", "log_jsonl", "log_files", "log_text", "log_batch", "log_artifact", "set_terminated",
    "create_run", "update_run", "delete_run", "job_run", "sweep_run", "adopt", "log_param", "create_experiment",
    "set_experiment_tag", "end",
}  # fmt: skip


def _writes(path: Path) -> tuple[set[str], set[str]]:
    import ast

    calls = {
        n.func.attr
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    }
    return calls & DB_WRITES, calls & MLFLOW_WRITES


def test_no_module_writes_to_both_the_results_db_and_mlflow(tmp_path):
    both = {}
    for path in sorted((ROOT / "copsd").rglob("*.py")):
        db, mlflow = _writes(path)
        if db and mlflow:
            both[str(path.relative_to(ROOT))] = (sorted(db), sorted(mlflow))
    assert both == {}
    # the checker sees such a module (the job runner before the recorder was one)
    mixed = tmp_path / "mixed.py"
    mixed.write_text("def f(db, run):\n    db.add_result('j', metrics={})\n    run.log_metrics({}, 0)\n")
    assert _writes(mixed) == ({"add_result"}, {"log_metrics"})
