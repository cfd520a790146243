"""docs/method.md's option tables are generated from the models (scripts/option_table.py): a field
added, removed or re-described without regenerating them fails here, as does a field without a
description naming its source."""

import importlib.util
import re
import sys
from pathlib import Path

from pydantic import BaseModel

from copsd.config import UNHASHED_PATHS, JobConfig
from copsd.spec import SweepSpec

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("option_table", ROOT / "scripts" / "option_table.py")
ot = importlib.util.module_from_spec(_spec)
sys.modules["option_table"] = ot
_spec.loader.exec_module(ot)

SOURCE = re.compile(r"\[(released: [^\]]+|PAPER\.md|copsd)\]")


def test_docs_option_table_is_current(capsys):
    assert ot.main(["--check"]) == 0, capsys.readouterr().out


def test_check_fails_in_one_line_when_stale(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "docs" / "method.md"
    doc.parent.mkdir()
    doc.write_text(f"intro\n{ot.BEGIN}\n| an old table |\n{ot.END}\noutro\n", encoding="utf-8")
    monkeypatch.setattr(ot, "ROOT", tmp_path)
    monkeypatch.setattr(ot, "DOC", doc)
    assert ot.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "python scripts/option_table.py" in out
    assert ot.main([]) == 0 and ot.main(["--check"]) == 0  # regenerated: current, prose kept
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith(f"{ot.END}\noutro\n") and "`train.lr`" in text


def test_every_field_says_what_it_does_and_where_its_default_comes_from():
    for model in (JobConfig, SweepSpec):
        for row in ot.rows(model):
            for tag, text in row.descriptions.items():
                assert SOURCE.search(text), (row.path, tag, text)
                assert "not hashed" not in text, (row.path, "UNHASHED_PATHS says so; the table shows it")


def test_every_model_field_has_a_sourced_description():
    from copsd import config
    from copsd.spec import models

    classes = [c for m in (config, models) for c in vars(m).values() if isinstance(c, type)]
    for cls in classes:
        if issubclass(cls, BaseModel) and cls.__module__ in (config.__name__, models.__name__):
            for name, f in cls.model_fields.items():
                assert f.description and SOURCE.search(f.description), (cls.__name__, name)


def test_hashed_column_follows_unhashed_paths():
    table = "\n".join(ot.table(JobConfig, {".".join(p) for p in UNHASHED_PATHS}))
    for section, key in UNHASHED_PATHS:
        assert re.search(rf"^\| `{section}\.{key}` \|[^\n]*\| no \|", table, re.M), (section, key)
    assert "| `train.lr` | float > 0 | `5e-06` | yes |" in table
    assert "| `train.temperature` | float > 0 | copsd: `1.1`<br>grpo: `1.2` | yes |" in table
