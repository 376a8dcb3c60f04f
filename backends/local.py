"""Jobs in a worker process on this machine (CPU, CUDA or MPS).

Each job runs in its own spawned process, so a crash or an out-of-memory kill in the model never
takes the web server down. One job runs at a time (one GPU, or a few CPU cores); the others wait
in order. Click jobs (a mask from points) go beside that queue to one long-lived process that
keeps the model loaded and the image encoded: a click must answer in a moment, not after a
fine-tune or a model load.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass

from backends.base import Backend
from sam2pal.jobs import FINAL_EVENTS, JobSpec, JobStatus, PointsRunner, apply_event, apply_final, final_event, run_job

_GRACE_SECONDS = 15.0
_CLICK_IDLE_SECONDS = 600.0  # the click process (and its model) goes after this long unused
_CLICK_TIME_LIMIT = 600.0  # a first click may download a model; longer than this, it is hung
# The prompt decoder is a few small matrix products: on one thread it takes no longer, and it
# does not spin against the web server and the browser for the machine's cores (measured:
# 0.13 s of CPU per click instead of 0.2-0.45 s on the 2-core box). Encoding keeps every thread.
_CLICK_DECODER_THREADS = 1


def _worker(spec_json: str, events, stop) -> None:
    """Entry point of the job process: run the job, send every event, end with done or error."""
    events.put(final_event(lambda: run_job(JobSpec.from_json(spec_json), events.put, stop.is_set)))


def _click_worker(connection) -> None:
    """Entry point of the click process: answer click jobs until told to stop (None)."""
    runner = PointsRunner(decoder_threads=_CLICK_DECODER_THREADS)
    while True:
        try:
            spec_json = connection.recv()
        except EOFError:  # the server went away
            return
        if spec_json is None:
            return
        connection.send(final_event(lambda: runner.run(JobSpec.from_json(spec_json))))


class _ClickLane:
    """One long-lived process for click jobs, started on the first click and stopped when idle."""

    def __init__(self, context, idle_seconds: float, time_limit: float):
        self._context = context
        self._idle_seconds = idle_seconds
        self._time_limit = time_limit
        self._process = None
        self._connection = None
        self._idle_timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def run(self, spec: JobSpec) -> tuple[dict | None, int | None]:
        """The job's final event, or None and the exit code if the process died on it."""
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._connection, child = self._context.Pipe()
                self._process = self._context.Process(target=_click_worker, args=(child,), daemon=True,
                                                      name="sam2pal-clicks")
                self._process.start()
                child.close()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            final = None
            deadline = time.monotonic() + self._time_limit
            try:
                self._connection.send(spec.to_json())
                while final is None and self._process.is_alive() and time.monotonic() < deadline:
                    if self._connection.poll(0.5):
                        final = self._connection.recv()
            except (OSError, EOFError):  # the process died mid-exchange
                final = None
            if final is None:
                process = self._process
                timed_out = process.is_alive()
                self._stop()  # a hung process would hold every later click
                if timed_out:
                    return {"type": "error", "message": f"no mask after {self._time_limit:g} s; the click "
                                                        "process was restarted, click again"}, None
                return None, process.exitcode
            self._idle_timer = threading.Timer(self._idle_seconds, self.close)
            self._idle_timer.daemon = True
            self._idle_timer.start()
            return final, None

    def close(self) -> None:
        """Stop the process (its model and features are freed); the next click starts another."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(OSError):  # a process already gone has no pipe to read it
            self._connection.send(None)
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._connection.close()
        self._process = self._connection = None


@dataclass
class _Job:
    spec: JobSpec
    status: JobStatus
    process: multiprocessing.Process | None = None
    stop: object | None = None


class LocalBackend(Backend):
    name = "local"

    def __init__(self, click_idle_seconds: float = _CLICK_IDLE_SECONDS, click_time_limit: float = _CLICK_TIME_LIMIT) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._clicks = _ClickLane(self._context, click_idle_seconds, click_time_limit)
        self._jobs: dict[str, _Job] = {}
        self._waiting: list[str] = []
        self._running: str | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "local worker process (one job at a time)"

    def start(self, spec: JobSpec) -> str:
        with self._lock:
            job = self._jobs[spec.job_id] = _Job(spec, JobStatus(spec.job_id, spec.kind, "queued", message="waiting"))
            if spec.kind != "points":
                self._waiting.append(spec.job_id)
        if spec.kind == "points":
            threading.Thread(target=self._click, args=(job,), daemon=True).start()
        else:
            self._next()
        return spec.job_id

    def _click(self, job: _Job) -> None:
        with self._lock:
            job.status.state, job.status.message = "running", "computing the mask"
        final, exitcode = None, None
        try:
            final, exitcode = self._clicks.run(job.spec)
        except Exception as exc:  # the lane itself failed (no process could start): the click fails, visibly
            final = {"type": "error", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            with self._lock:
                apply_final(job.status, final, exitcode)

    def _next(self) -> None:
        with self._lock:
            if self._running is not None or not self._waiting:
                return
            job = self._jobs[self._waiting.pop(0)]
            self._running = job.spec.job_id
            events = self._context.Queue()
            job.stop = self._context.Event()
            job.process = self._context.Process(
                target=_worker, args=(job.spec.to_json(), events, job.stop), daemon=True, name=f"sam2pal-{job.spec.kind}"
            )
            job.status.state = "running"
            job.status.message = "starting"
            job.process.start()
        threading.Thread(target=self._watch, args=(job, events), daemon=True).start()

    def _watch(self, job: _Job, events) -> None:
        """Move events from the worker into the job status until the worker ends."""
        final: dict | None = None
        while final is None:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                if not job.process.is_alive():
                    break
                continue
            if event["type"] in FINAL_EVENTS:
                final = event
            else:
                with self._lock:
                    apply_event(job.status, event)
        job.process.join(timeout=_GRACE_SECONDS)
        with self._lock:
            apply_final(job.status, final, job.process.exitcode, job.stop.is_set())
            self._running = None
        self._next()

    def status(self, job_id: str) -> JobStatus:
        with self._lock:
            return self._jobs[job_id].status.copy()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            if job_id in self._waiting:
                self._waiting.remove(job_id)
                job.status.state = job.status.message = "cancelled"
                return
            if job.status.finished or job.stop is None:
                return
            job.stop.set()
        threading.Timer(_GRACE_SECONDS, self._kill_if_alive, args=(job,)).start()

    def _kill_if_alive(self, job: _Job) -> None:
        if job.process is not None and job.process.is_alive():
            job.process.terminate()

    def close(self) -> None:
        self._clicks.close()
        with self._lock:
            self._waiting.clear()
            jobs = list(self._jobs.values())
        for job in jobs:
            if job.process is not None and job.process.is_alive():
                job.process.terminate()
                job.process.join(timeout=5)
