"""The `shuru` command line: the Typer app (`app`), the interactive terminal (`terminal`), and
the doctor, upgrade and progress pieces only the CLI uses."""

from .app import app, main

__all__ = ["app", "main"]
