"""Jobs on Hugging Face Spaces ZeroGPU: a GPU is attached per call, for a declared duration.

`spaces.GPU(duration=...)` runs the decorated function in a forked worker that holds a GPU; it
streams events back by yielding them. ZeroGPU calls end after their duration (at most about 20
minutes for a generator) and draw on a small daily quota, so prediction of a collection and
short fine-tunes fit, and longer fine-tunes are refused up front with the reason, instead of
dying half-way.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from dataclasses import dataclass

from backends.base import Backend
from sam2pal.jobs import FINAL_EVENTS, JobSpec, JobStatus, apply_event, apply_final, final_event, run_job


@dataclass
class ZeroGPULimits:
    max_seconds: int = 900  # a generous margin under ZeroGPU's limit for one call
    seconds_per_step: float = 1.5  # a palindrome step at 1024 px on a ZeroGPU H200 slice, bf16
    seconds_per_image: float = 0.5
    startup_seconds: int = 60  # model download/load and template memory


def estimate_seconds(spec: JobSpec, count: int, limits: ZeroGPULimits) -> int:
    """The duration to ask ZeroGPU for: start-up plus the job's work, rounded up."""
    if spec.kind == "train":
        epochs = int(spec.train.get("epochs", 5))
        steps = int(spec.train.get("steps_per_epoch") or count)
        work = epochs * steps * limits.seconds_per_step + (epochs + 1) * limits.seconds_per_image * 4
    else:
        work = count * limits.seconds_per_image
    return int(math.ceil(limits.startup_seconds + work))


def _events(spec_json: str):
    """Runs inside the GPU worker: the job in a thread, its events yielded as they come."""
    spec = JobSpec.from_json(spec_json)
    events: queue.Queue = queue.Queue()

    def work() -> None:
        events.put(final_event(lambda: run_job(spec, events.put, lambda: False)))

    threading.Thread(target=work, daemon=True).start()
    while True:
        event = events.get()
        yield event
        if event["type"] in FINAL_EVENTS:
            return


class ZeroGPUBackend(Backend):
    name = "zerogpu"

    def __init__(self, limits: ZeroGPULimits | None = None):
        if not os.environ.get("SPACES_ZERO_GPU"):
            raise ValueError("the zerogpu backend only works on a Hugging Face ZeroGPU Space (SPACES_ZERO_GPU is not "
                             "set); use --backend local")
        import spaces

        self._spaces = spaces
        self.limits = limits or ZeroGPULimits()
        self._statuses: dict[str, JobStatus] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "Hugging Face ZeroGPU (short jobs; long fine-tunes need a GPU Space)"

    def start(self, spec: JobSpec) -> str:
        from sam2pal.io.images import list_images

        count = 1 if spec.kind == "points" else len(list_images(spec.images))  # a click names one image
        seconds = estimate_seconds(spec, count, self.limits)
        status = JobStatus(spec.job_id, spec.kind, "queued", message=f"asking ZeroGPU for {seconds} s")
        with self._lock:
            self._statuses[spec.job_id] = status
        if seconds > self.limits.max_seconds:
            status.state = "failed"
            status.error = (f"this {spec.kind} job needs about {seconds} s of GPU, more than one ZeroGPU call allows "
                            f"({self.limits.max_seconds} s); use fewer epochs or images, or run sam2pal on a GPU "
                            "Space or your own machine")
            return spec.job_id
        gpu_call = self._spaces.GPU(duration=seconds)(_events)
        threading.Thread(target=self._run, args=(gpu_call, spec), daemon=True).start()
        return spec.job_id

    def _run(self, gpu_call, spec: JobSpec) -> None:
        status = self._statuses[spec.job_id]
        status.state = "running"
        for event in gpu_call(spec.to_json()):
            with self._lock:
                if event["type"] in FINAL_EVENTS:
                    apply_final(status, event)
                else:
                    apply_event(status, event)
            if spec.job_id in self._cancelled:
                status.state = "cancelled"
                return  # closing the generator ends the GPU call

    def status(self, job_id: str) -> JobStatus:
        with self._lock:
            return self._statuses[job_id].copy()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled.add(job_id)
            if self._statuses[job_id].state == "queued":
                self._statuses[job_id].state = "cancelled"
