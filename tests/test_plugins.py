"""Plugins add to the registries without the core knowing them: a module named in $COPSD_PLUGINS
adds a language, a benchmark with its own source, and default training data; the CLI, config
validation and loading then see them. Each check runs the real CLI in a fresh process (plugins
load once per process)."""

import textwrap

from conftest import run_cli

PLUGIN = textwrap.dedent("""
    from copsd.data import benchmarks, languages, training

    def _problems(b, language, split, data_dir):
        return [benchmarks.Problem(f"toy-{language}-{i}", f"{i} + {i} = ?", str(2 * i)) for i in range(5)]

    def register():
        languages.add_language_source(lambda raw: {"toy": {**raw["eng"], "name": "Toyish"}})
        benchmarks.register_source("toy", benchmarks.Source(load=_problems, availability=lambda b, l, s: "made"))
        benchmarks.register_benchmark({"name": "toybench", "source": "toy", "languages": ["toy", "eng"],
                                       "splits": ["test"]})
        training.register_default_source("toy", lambda lang: ([], "nothing"))
""")

SPEC = textwrap.dedent("""
    name: toy
    defaults: {model: builtin:tiny-qwen3, dtype: float32,
               eval: {benchmark: toybench, decoding: {n_samples: 1, max_new_tokens: 4}}}
    matrix: {language: [toy], method: [base]}
""")


def test_a_plugin_adds_a_language_benchmark_and_data(workdir):
    (workdir / "toy_plugin.py").write_text(PLUGIN)
    (workdir / "toy.yaml").write_text(SPEC)
    env = {"COPSD_PLUGINS": "toy_plugin", "PYTHONPATH": str(workdir)}
    r = run_cli("data", "list", "-b", "toybench", cwd=workdir, env=env)
    assert r.returncode == 0, r.stderr
    assert "Toyish" in r.stdout and "made" in r.stdout
    r = run_cli("sweep", "run", "toy.yaml", "--no-mlflow", cwd=workdir, env=env)
    assert r.returncode == 0, r.stderr
    assert "1 done, 0 failed" in r.stdout
    # without the plugin the same spec is a one-line user error naming the field
    r = run_cli("sweep", "plan", "toy.yaml", cwd=workdir)
    assert r.returncode == 2 and "unknown language 'toy'" in r.stderr and "Traceback" not in r.stderr


def test_a_missing_plugin_is_one_line(workdir):
    r = run_cli("data", "list", cwd=workdir, env={"COPSD_PLUGINS": "no_such_plugin_module"})
    assert r.returncode == 2 and "plugin 'no_such_plugin_module'" in r.stderr and "Traceback" not in r.stderr
