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
