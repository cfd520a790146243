"""The `copsd` command line: one thin module per command group (`sweep`, `evaluate`, `data`,
`report`, `speed`); the app and the entry point are in `app.py`. `python cli.py ...` is the same."""

from copsd.cli.app import app, main

__all__ = ["app", "main"]
