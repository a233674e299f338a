"""Independent runs in worker processes: simulated runs need no device, so a sweep of
(load, policy) runs and each policy's capacity search can use every core.

Each task is a picklable callable with its arguments; it runs in a fresh process
(`spawn`: no state of the parent leaks in, on every platform) and its result comes
back whole. Tasks are seeded by their arguments alone, so the results do not depend on
how many workers ran them or in which order they finished. With one job nothing is
spawned: the tasks run here, in order.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from predlat.errors import ConfigError

Task = tuple[Callable[..., Any], tuple[Any, ...]]


def check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")


class Workers:
    """A pool of worker processes, kept for several batches of tasks (starting one
    costs an interpreter and predlat's imports), or none with one job."""

    def __init__(self, jobs: int) -> None:
        check_jobs(jobs)
        self.jobs = jobs
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Any]]:
        """(index, result) of every task, as each finishes: in order with one job, in
        completion order with several. A task's exception is raised here."""
        if self.jobs == 1 or len(tasks) <= 1:
            for i, (fn, args) in enumerate(tasks):
                yield i, fn(*args)
            return
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=context)
        index: dict[Future, int] = {
            self._pool.submit(fn, *args): i for i, (fn, args) in enumerate(tasks)
        }
        pending = set(index)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield index[future], future.result()
        finally:
            for future in pending:
                future.cancel()


__all__ = ["Task", "Workers", "check_jobs"]
