"""Progress display for long host-side steps (image builds), as a callable the builders call.

Builders only know `progress(step, fraction)`: `fraction` is None while a step's length is
unknown and 1.0 when it is done. Rendering is rich's; without a terminal (CI, pipes) each step
prints one plain line instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import time


class RichProgress:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self._progress = None
        self._tasks: dict[str, int] = {}
        self._started: dict[str, float] = {}

    def __enter__(self) -> "RichProgress":
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                TimeElapsedColumn(), console=Console(file=self.stream), transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress:
            self._progress.__exit__(*exc)

    def __call__(self, step: str, fraction: float | None = None) -> None:
        first = step not in self._tasks
        if first:
            self._started[step] = time.monotonic()
            self._tasks[step] = (self._progress.add_task(step, total=None)
                                 if self._progress else 0)
        if self._progress:
            task = self._tasks[step]
            if fraction is None:
                return
            self._progress.update(task, total=1.0, completed=min(fraction, 1.0))
        elif fraction is not None and fraction >= 1.0:
            took = time.monotonic() - self._started[step]
            print(f"shuru: {step}: done in {took:.1f} s", file=self.stream, flush=True)
        elif first:
            print(f"shuru: {step} ...", file=self.stream, flush=True)
