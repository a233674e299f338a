"""Progress of a long study on the terminal: overall steps, the current step, a log."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class StudyProgress:
    """An overall bar over the study's steps, a bar for the current step, and a log."""

    def __init__(self, console: Console, enabled: bool, total: int) -> None:
        self.console = console
        self.enabled = enabled
        self.total = total
        self.started = time.perf_counter()
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._current: TaskID | None = None
        self._done = -1

    def __enter__(self) -> StudyProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.__enter__()
            self._overall = self._progress.add_task("[bold]study", total=self.total)
            self._current = self._progress.add_task("", total=1)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, exc, tb)

    def step(self, description: str) -> None:
        self._done += 1
        elapsed = time.perf_counter() - self.started
        self.log(f"[{self._done + 1}/{self.total}] {description}", elapsed)
        if self._progress is not None:
            self._progress.update(self._overall, completed=self._done)
            self._progress.reset(self._current, total=1, description=f"  {description}")

    def sub_progress(self, done: float, total: float) -> None:
        if self._progress is not None:
            self._progress.update(self._current, completed=done, total=total)

    def detail(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._current, description=f"  {text}")

    def log(self, text: str, elapsed: float | None = None) -> None:
        elapsed = time.perf_counter() - self.started if elapsed is None else elapsed
        self.console.print(f"[dim]{elapsed:6.0f}s[/] {text}", highlight=False)
