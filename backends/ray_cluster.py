"""Jobs on a Ray cluster: a small CPU front end (a free Space, a laptop) drives GPU nodes.

Each job is one Ray task. Its inputs (template file and images, specimen folder, adapter) travel
with it as bytes, so the nodes need no storage shared with the app; it runs `jobs.run_job` in a
scratch folder on its node, streams its events through a small actor, and sends its result
files back, which are unpacked into the spec's workdir so the page sees what a local job leaves.
A task that dies on the cluster (out of memory, a lost node) is a failed job here; the app stays
up, since nothing of the job runs in its process.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from backends.base import Backend
from sam2pal.errors import SamPalError
from sam2pal.io.images import IMAGE_EXTENSIONS
from sam2pal.jobs import FINAL_EVENTS, JobSpec, JobStatus, apply_event, apply_final, final_event, run_job

_POLL_SECONDS = 0.3
_GRACE_SECONDS = 15.0


def _pack(files: dict[str, Path]) -> bytes:
    """Files and folders (by their name in the archive) as one zip, in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, path in files.items():
            if path.is_dir():
                for item in sorted(path.rglob("*")):
                    if item.is_file():
                        bundle.write(item, f"{name}/{item.relative_to(path).as_posix()}")
            elif path.is_file():
                bundle.write(path, name)
    return buffer.getvalue()


def _unpack(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        for member in bundle.infolist():
            target = (folder / member.filename).resolve()
            if not target.is_relative_to(folder.resolve()):
                raise SamPalError(f"a job's result names a file outside its folder: {member.filename}")
        bundle.extractall(folder)


def _inputs(spec: JobSpec) -> tuple[dict[str, Path], JobSpec]:
    """What the job reads, by archive name, and the spec as it reads on the node (paths relative
    to the job's scratch folder there)."""
    if spec.kind == "points":  # `images` names the one image clicked on
        name = Path(spec.images).name
        return {f"image/{name}": Path(spec.images)}, replace(spec, images=f"in/image/{name}")
    files = {"templates.json": Path(spec.templates), "images": Path(spec.images)}
    changes = {"templates": "in/templates.json", "images": "in/images", "template_images": "in/template_images"}
    folder = Path(spec.template_images or Path(spec.templates).parent)  # the images the templates name
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            files[f"template_images/{path.name}"] = path
    if spec.adapter:
        files["adapter"], changes["adapter"] = Path(spec.adapter), "in/adapter"
    return files, replace(spec, **changes)


class _Events:
    """A Ray actor between a job and the app: events one way, the stop request the other."""

    def __init__(self) -> None:
        self._events: list[dict] = []
        self._stop = False

    def put(self, event: dict) -> None:
        self._events.append(event)

    def drain(self) -> list[dict]:
        events, self._events = self._events, []
        return events

    def stop(self) -> None:
        self._stop = True

    def stopped(self) -> bool:
        return self._stop


def _run_on_node(spec_json: str, inputs: bytes, events) -> tuple[dict, bytes]:
    """The Ray task: the job in a scratch folder; its final event and its workdir's results."""
    import ray

    root = Path(tempfile.mkdtemp(prefix="sam2pal-job-"))
    try:
        _unpack(inputs, root / "in")
        spec = JobSpec.from_json(spec_json)
        local = {key: str(root / value) if value else value
                 for key, value in (("templates", spec.templates), ("images", spec.images),
                                    ("template_images", spec.template_images), ("adapter", spec.adapter))}
        spec = replace(spec, workdir=str(root / "work"), **local)
        (root / "work").mkdir()
        final = final_event(lambda: run_job(spec, lambda event: events.put.remote(event),
                                            lambda: ray.get(events.stopped.remote())))
        ray.get(events.stopped.remote())  # an actor runs one caller's calls in order: every put has landed
        if final["type"] == "done":  # result paths become relative to the workdir that goes back
            final["files"] = {name: str(Path(path).relative_to(root / "work")) for name, path in final["files"].items()}
        return final, _pack({"work": root / "work"}) if final["type"] == "done" else b""
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class _Job:
    spec: JobSpec
    status: JobStatus
    events: object | None = None
    result: object | None = None


class RayBackend(Backend):
    name = "ray"

    def __init__(self, address: str | None = None, gpus_per_job: float | None = None) -> None:
        try:
            import ray
        except ImportError as error:
            raise ValueError("the ray backend needs Ray: pip install 'sam2pal[ray]'") from error
        self._ray = ray
        address = address or os.environ.get("SAM2PAL_RAY_ADDRESS")
        if not ray.is_initialized():  # None: a local Ray on this machine
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        self.address = address or "a local Ray"
        gpus = gpus_per_job if gpus_per_job is not None else float(os.environ.get("SAM2PAL_RAY_GPUS", "0"))
        self._task = ray.remote(num_gpus=gpus, max_retries=0)(_run_on_node)
        self._actor = ray.remote(num_cpus=0)(_Events)
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"Ray cluster at {self.address}"

    def start(self, spec: JobSpec) -> str:
        files, on_node = _inputs(spec)
        job = _Job(spec, JobStatus(spec.job_id, spec.kind, "queued", message="sent to the cluster"))
        with self._lock:
            self._jobs[spec.job_id] = job
        job.events = self._actor.remote()
        job.result = self._task.remote(on_node.to_json(), _pack(files), job.events)
        threading.Thread(target=self._watch, args=(job,), daemon=True).start()
        return spec.job_id

    def _watch(self, job: _Job) -> None:
        ray = self._ray
        final = None
        while final is None:
            ready, _ = ray.wait([job.result], timeout=_POLL_SECONDS)
            self._fold(job, self._drain(job))
            if not ready:
                continue
            try:
                final, results = ray.get(job.result)
                if final["type"] == "done":
                    workdir = Path(job.spec.workdir)
                    _unpack(results, workdir)
                    final["files"] = {name: str(workdir / "work" / path) for name, path in final["files"].items()}
            except (ray.exceptions.RayError, SamPalError, OSError) as error:  # died there, or its results did
                final = {"type": "error", "message": "the job's worker on the cluster ended without a result "
                         f"({type(error).__name__}: {' '.join(str(error).split())[:300]}); the app is fine, "
                         "try again or with a smaller image size or batch size"}
        self._fold(job, self._drain(job))
        with self._lock:
            apply_final(job.status, final)
        ray.kill(job.events)

    def _drain(self, job: _Job) -> list[dict]:
        """Events so far; none when the events actor is gone (its node was lost): the task's
        result still says how the job ended."""
        try:
            return self._ray.get(job.events.drain.remote())
        except self._ray.exceptions.RayError:
            return []

    def _fold(self, job: _Job, events: list[dict]) -> None:
        with self._lock:
            if events and job.status.state == "queued":
                job.status.state = "running"
            for event in events:
                if event["type"] not in FINAL_EVENTS:
                    apply_event(job.status, event)

    def status(self, job_id: str) -> JobStatus:
        with self._lock:
            return self._jobs[job_id].status.copy()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
        if job.status.finished:
            return
        if job.status.state == "queued":  # still waiting for a node (or a GPU): it never starts
            self._ray.cancel(job.result)
            return
        job.events.stop.remote()  # a running job stops at its next step; one that does not is killed
        timer = threading.Timer(_GRACE_SECONDS, lambda: None if job.status.finished else
                                self._ray.cancel(job.result, force=True))
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if not job.status.finished:
                self._ray.cancel(job.result, force=True)
