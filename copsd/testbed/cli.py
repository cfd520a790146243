"""`copsd testbed build|info`, added to the CLI through the `copsd.commands` entry point."""

from __future__ import annotations

import typer

app = typer.Typer(help="The CPU testbed: a synthetic world and a tiny model pretrained on it.", no_args_is_help=True)


@app.command("build")
def build(
    ship: bool = typer.Option(False, "--ship", help="copy the rebuilt model into the package (maintainers)"),
):
    """Rebuild the testbed model from its recipe on this machine (~5 minutes on 2 cores, cached).

    `builtin:testbed` is the model shipped with the package, the same on every machine; a rebuild
    lands near it, not on it (CPUs round differently). Use the rebuilt one as `model: <path>`.
    """
    from copsd.cli.common import console, say
    from copsd.testbed.build import build_testbed_cached
    from copsd.testbed.build import ship as ship_model

    path = build_testbed_cached(log=say)
    console.print(f"rebuilt testbed model: {path}")
    if ship:
        console.print(f"shipped as builtin:testbed: {ship_model(path)}")


@app.command("info")
def info():
    """Which testbed model `builtin:testbed` is, whether a rebuild exists, and a problem per language."""
    from copsd.cli.common import console
    from copsd.testbed.build import SHIPPED, shipped_path, testbed_path
    from copsd.testbed.world import SYNTHETIC, problems

    shipped = shipped_path()
    console.print(f"builtin:testbed: {shipped or 'not shipped for this recipe (built on first use)'}")
    if shipped is None and (SHIPPED / "config.json").is_file():
        console.print(f"  ({SHIPPED} holds a model of another recipe or other English prompts)")
    p = testbed_path()
    console.print(f"rebuilt here: {p} ({'built' if (p / 'config.json').is_file() else 'not built'})")
    for lang in ("eng", *SYNTHETIC):
        q, prob = problems(lang, "test", 1)[0]
        console.print(f"  {lang}: {q}  ->  {prob.answer}", highlight=False)
