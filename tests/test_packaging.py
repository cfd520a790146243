"""A non-editable install (`pip install .`) gets every bundled file and the plugin entry points."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_wheel_carries_every_resource_and_the_testbed_plugin(tmp_path):
    src = tmp_path / "src"  # a clean copy: no stale build/ of earlier layouts can leak into the wheel
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "copsd", src / "copsd", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    r = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("copsd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    resources = ROOT / "copsd" / "resources"
    expected = {p.relative_to(ROOT).as_posix() for p in resources.rglob("*") if p.is_file()}
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "copsd").rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == modules  # nothing missing, nothing stale
    assert expected - names == set()
    assert "copsd/resources/train/gsm8k_train.sw" in names and "copsd/resources/benchmarks.yaml" in names
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "copsd" / "testbed" / "model").iterdir()}
    assert "copsd/testbed/model/model.safetensors" in shipped and shipped <= names  # the shipped testbed model
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[copsd.plugins]" in text and "copsd.testbed.plugin:register" in text
    assert "[copsd.commands]" in text and Path("copsd/testbed/plugin.py").as_posix() in names
