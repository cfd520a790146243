"""A non-editable install (`pip install .`) gets every bundled file and the plugin entry points."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src"  # a clean copy: no stale build/ of earlier layouts can leak into the wheel
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "copsd", src / "copsd", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    r = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (path,) = tmp_path.glob("copsd-*.whl")
    return path


@pytest.mark.slow
def test_a_non_editable_install_runs_from_its_own_files(wheel, tmp_path):
    """`pip install .` (the wheel, into its own directory): the bundled Swahili training data, the
    benchmark table, the language registry and the shipped testbed model are found there, and a
    demo job runs end to end with the plugin registered through the installed entry points."""
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import copsd, json; from copsd.data.training import load_training_data; "
        "from copsd.data.benchmarks import load_problems; "
        "tr, va = load_training_data('swa', val_size=8); "
        "print(json.dumps({'file': copsd.__file__, 'swa': len(tr) + len(va), "
        "'mgsm': len(load_problems('mgsm', 'swa')), 'polymath': len(load_problems('polymath', 'swa', 'low'))}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(site))  # the installed copy, not this checkout
    assert got == {**got, "swa": 7468, "mgsm": 250, "polymath": 125}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "copsd",
            "sweep",
            "run",
            "demo",
            "--only",
            "method=base",
            "--only",
            "language=synlo",
            "--no-mlflow",
        ],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    assert "1 done, 0 failed" in run.stdout and (work / "experiments.db").exists()


@pytest.mark.slow
def test_wheel_carries_every_resource_and_the_testbed_plugin(wheel):
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
