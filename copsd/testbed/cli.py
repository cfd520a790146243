"""`copsd testbed build|info`, added to the CLI through the `copsd.commands` entry point."""

from __future__ import annotations

import typer

app = typer.Typer(help="The CPU testbed: a synthetic world and a tiny model pretrained on it.", no_args_is_help=True)


@app.command("build")
def build():
    """Pretrain builtin:testbed now (~5 minutes on 2 cores; once per machine, then cached)."""
    from copsd.cli.common import console, say
    from copsd.testbed.build import build_testbed_cached

    path = build_testbed_cached(log=say)
    console.print(f"builtin:testbed is at {path}")


@app.command("info")
def info():
    """Where builtin:testbed is cached, whether it is built, and a sample problem per language."""
    from copsd.cli.common import console
    from copsd.testbed.build import testbed_path
    from copsd.testbed.world import SYNTHETIC, problems

    p = testbed_path()
    console.print(f"builtin:testbed: {p} ({'built' if (p / 'config.json').is_file() else 'not built yet'})")
    for lang in ("eng", *SYNTHETIC):
        q, prob = problems(lang, "test", 1)[0]
        console.print(f"  {lang}: {q}  ->  {prob.answer}", highlight=False)
