"""Jobs on another sam2pal server, through its named API endpoints.

The inputs a spec names (template file and images, specimen folder) are uploaded, the job runs
there, and its result files are downloaded into the spec's workdir when it is done, so the page
sees the same files a local job would leave.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Iterator

from backends.base import Backend
from sam2pal.errors import SamPalError
from sam2pal.io.images import IMAGE_EXTENSIONS
from sam2pal.io.run_report import run_files
from sam2pal.jobs import SUBMITTABLE_FIELDS, JobSpec, JobStatus


class RemoteBackend(Backend):
    name = "remote"

    def __init__(self, url: str | None = None):
        if not url:
            raise ValueError("the remote backend needs the other server's address: --remote-url URL (or SAM2PAL_REMOTE_URL)")
        from gradio_client import Client

        self.url = url
        self._client = Client(url, verbose=False)
        self._specs: dict[str, JobSpec] = {}
        self._remote_ids: dict[str, str] = {}
        self._fetched: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"remote sam2pal server {self.url}"

    def start(self, spec: JobSpec) -> str:
        from gradio_client import handle_file

        def images(folder: str) -> list:
            return [handle_file(str(p)) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]

        if spec.kind == "points":
            raise SamPalError("click points need the model on this server; with --backend remote draw the masks "
                              "in the editor, or start the app with --backend local for click points")
        if spec.labels is not None or spec.train.get("init_adapter") is not None or spec.library is not None:
            raise SamPalError("corrections as labels, the previous adapter and the adapter library run on this "
                              "server's own backend only; untick or change those options for the remote server")
        adapter = None
        if spec.adapter is not None:  # sent along as the adapter.zip a fine-tune hands out
            adapter = Path(spec.workdir) / "adapter_upload.zip"
            adapter.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(adapter, "w") as bundle:
                for name in ("adapter_model.safetensors", "adapter_config.json"):
                    if not (Path(spec.adapter) / name).is_file():
                        raise SamPalError(f"adapter {spec.adapter} has no {name}; pick a finished fine-tune")
                    bundle.write(Path(spec.adapter) / name, name)
            adapter = handle_file(str(adapter))
        params = json.dumps({k: getattr(spec, k) for k in SUBMITTABLE_FIELDS})
        template_folder = spec.template_images or str(Path(spec.templates).parent)
        with _refusals():
            remote_id = self._client.predict(spec.kind, handle_file(spec.templates), images(template_folder),
                                             images(spec.images), params, adapter, api_name="/submit_job")
        with self._lock:
            self._specs[spec.job_id] = spec
            self._remote_ids[spec.job_id] = remote_id
        return spec.job_id

    def status(self, job_id: str) -> JobStatus:
        remote_id = self._remote_ids[job_id]
        with _refusals():
            data = json.loads(self._client.predict(remote_id, api_name="/job_status"))
        names = data.pop("files")
        status = JobStatus(**{**data, "job_id": job_id, "files": {}})
        if status.state == "done":
            status.files = self._fetch(job_id, remote_id, names)
        return status

    def _fetch(self, job_id: str, remote_id: str, names: list[str]) -> dict[str, str]:
        """Download a finished job's files once, laid out as a local job leaves them."""
        with self._lock:
            if job_id in self._fetched:
                return self._fetched[job_id]
        workdir = Path(self._specs[job_id].workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        for name in names:
            if name in ("results_zip", "adapter_zip", "predictions", "report"):
                with _refusals():
                    downloaded = Path(self._client.predict(remote_id, name, api_name="/job_file"))
                files[name] = str(shutil.move(downloaded, workdir / downloaded.name))
        if "results_zip" in files:
            out = workdir / "out"
            with zipfile.ZipFile(files["results_zip"]) as bundle:
                bundle.extractall(out)  # zipfile drops absolute paths and ".." parts
            files.update({name: path for name, path in run_files(out).items() if name != "results_zip"})
        if "adapter_zip" in files:
            adapter = workdir / "adapter"
            with zipfile.ZipFile(files["adapter_zip"]) as bundle:
                bundle.extractall(adapter)
            files["adapter"] = str(adapter)
        with self._lock:
            self._fetched[job_id] = files
        return files

    def cancel(self, job_id: str) -> None:
        with _refusals():
            self._client.predict(self._remote_ids[job_id], api_name="/cancel_job")


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The other server's own refusal (a gr.Error there, an AppError here) is a SamPalError with
    its message, so the page shows it as a message rather than a raw exception."""
    from gradio_client.exceptions import AppError

    try:
        yield
    except AppError as exc:
        raise SamPalError(f"the remote server refused: {exc}") from exc
