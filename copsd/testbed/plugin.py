"""Registers the testbed with the core: its synthetic languages, its benchmark, its training data
and `builtin:testbed`. Announced in pyproject.toml (entry point group `copsd.plugins`); the core
never imports this package, so deleting it leaves the core intact."""

from __future__ import annotations

from copsd.data import benchmarks, languages, training
from copsd.models.builtin import register_builtin


def _languages(raw: dict) -> dict[str, dict]:
    """The synthetic languages, derived from the registry's English entry."""
    if "eng" not in raw:
        return {}
    from copsd.testbed.world import language_entries

    return language_entries(raw["eng"])


def _load_problems(b: benchmarks.Benchmark, language: str, split: str, _data_dir: str | None):
    from copsd.testbed.world import TEST_SIZE, problems

    return [
        benchmarks.Problem(b.problem_id({}, language, split, i), q, str(p.answer))
        for i, (q, p) in enumerate(problems(language, split, TEST_SIZE))
    ]


def _training_examples(language: str) -> tuple[list[training.TrainExample], str]:
    from copsd.testbed.world import TRAIN_SIZE, problems

    examples = [
        training.TrainExample(f"testbed-train-{i}", q, p.question, p.solution, str(p.answer))
        for i, (q, p) in enumerate(problems(language, "train", TRAIN_SIZE))
    ]
    return examples, f"testbed world ({language})"


def _build_model():
    from copsd.testbed.build import testbed_model

    return testbed_model()


def _identifier():
    from copsd.testbed.world import identify_segments

    return identify_segments


def register() -> None:
    from copsd.evaluation.language_id import register_identifier
    from copsd.testbed.world import SYNTHETIC

    register_identifier(SYNTHETIC, _identifier, min_letters=3)  # exact vocabularies: one word is enough
    languages.add_language_source(_languages)
    benchmarks.register_source(
        "testbed", benchmarks.Source(load=_load_problems, availability=lambda b, lang, split: "generated")
    )
    benchmarks.register_benchmark(
        {
            "name": "testbed",
            "title": "testbed (synthetic world; CPU demo)",
            "source": "testbed",
            "languages": ["eng", *SYNTHETIC],
            "splits": ["test"],
            "id": "testbed-{language}-{index}",
        }
    )
    for code in SYNTHETIC:
        training.register_default_source(code, _training_examples)
    register_builtin("testbed", _build_model)
