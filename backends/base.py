"""The one interface every backend implements.

A backend starts a job from a plain `JobSpec`, reports its status and progress events, cancels
it, and hands back its result files. The web app talks only to this interface.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from sam2pal.jobs import JobSpec, JobStatus


class Backend(ABC):
    name: str = "base"

    @abstractmethod
    def start(self, spec: JobSpec) -> str:
        """Queue or start the job; return its id."""

    @abstractmethod
    def status(self, job_id: str) -> JobStatus:
        """Current state, progress and all events so far (KeyError for an unknown id)."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Ask the job to stop; a queued job never starts."""

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.2) -> JobStatus:
        """Block until the job ends or `timeout` seconds pass; the status either way."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (status := self.status(job_id)).finished:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(poll)
        return status

    def files(self, job_id: str) -> dict[str, str]:
        """Result files of a finished job (name -> local path)."""
        return self.status(job_id).files

    def describe(self) -> str:
        """One line for the UI footer."""
        return self.name

    def close(self) -> None:
        """Stop workers and release resources."""
