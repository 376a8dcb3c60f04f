"""`sam2pal predict --ray`: the collection streamed through a pool of Ray Data actors.

Each actor loads the model (and adapter) and encodes the template memory once, then runs the
engine's batched path on the batches Ray Data hands it, writing each image's files and record
into OUT (shared storage on a cluster) as the plain path does. The driver only chooses every
image's output stem up front, collects one small row per image, and assembles predictions.json
and report.json from the records at the end.

Faults: actors restart and Ray retries the batch a dead actor held; an image written twice
lands in the same files (same stem, atomic writes), so it appears once. An image that cannot be
read comes back as a failure row and the run goes on. A run stopped half-way completes with the
same command: images with a record are not sent again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sam2pal.engine.propagate import Decoding, Loaded, Prediction, Propagator, load_specimen, predict_loaded, record_fields
from sam2pal.engine.qc import QCConfig
from sam2pal.errors import SamPalError
from sam2pal.io.outputs import PredictionWriter
from sam2pal.io.records import OutputOptions, RecordWriter
from sam2pal.io.templates import TemplateSet


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide: `address` None starts a local Ray here; "auto" or ray://… joins one."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0  # fractions share a GPU between workers
    cpus_per_worker: float | None = None  # default: this machine's CPUs shared out (local Ray), else 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise SamPalError(f"--ray-workers {self.workers} must be at least 1")
        if self.gpus_per_worker < 0:
            raise SamPalError(f"--gpus-per-worker {self.gpus_per_worker:g} cannot be negative")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise SamPalError(f"--cpus-per-worker {self.cpus_per_worker:g} must be positive")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything an actor needs to make the same predictions as the driver would."""

    model: str
    image_size: int
    fingerprint: str  # the driver's model: an actor that loads other weights refuses to run
    adapter: str | None
    templates: TemplateSet
    out_dir: str
    options: OutputOptions
    qc: QCConfig | None
    orientation: str
    decoding: Decoding
    device: str = "auto"  # resolved on the actor's node: Ray shows it the GPUs it was given


class PredictWorker:
    """A Ray Data actor: {"path", "stem"} rows in, {"stem", "error"} rows out ("" when written)."""

    def __init__(self, spec: WorkerSpec) -> None:
        from sam2pal.model.adapters import load_adapter
        from sam2pal.model.build import load_model

        model = load_model(spec.model, spec.image_size, spec.device)
        if model.fingerprint != spec.fingerprint:
            raise SamPalError(f"this worker loaded other weights for {spec.model!r} than the driver "
                              f"({model.fingerprint[:12]} vs {spec.fingerprint[:12]}); give every node the same model")
        if spec.adapter is not None:
            load_adapter(model, spec.adapter)
        self.propagator = Propagator(model, spec.templates, qc=spec.qc, orientation=spec.orientation)
        self.records = RecordWriter(Path(spec.out_dir), spec.templates.structures, spec.options)
        self.decoding = spec.decoding

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stems = dict(zip(batch["path"].tolist(), batch["stem"].tolist()))
        loaded = [load_specimen(Path(path), self.decoding) for path in stems]

        def write(item: Loaded, prediction: Prediction, seconds: float) -> None:
            self.records.write(stems[str(item.path)], item.path, item.photo.image, prediction.boxes,
                               prediction.scores, seconds, **record_fields(prediction), review=item.review)

        predict_loaded(self.propagator, loaded, write)
        failed = {str(item.path): item.error for item in loaded if item.error is not None}
        self.records.flush()  # every record is on disk before Ray hears the batch is done
        return {"path": batch["path"], "stem": batch["stem"],
                "error": np.array([failed.get(path, "") for path in stems], dtype=object)}


def _worker_cpus(settings: RaySettings, local_ray_started_here: bool) -> float:
    """This machine's CPUs are shared out only on the Ray started here: a cluster's nodes have their own."""
    if settings.cpus_per_worker is not None:
        return settings.cpus_per_worker
    if local_ray_started_here:
        return max(1.0, (os.cpu_count() or 1) // settings.workers)
    return 1.0


def predict_on_ray(spec: WorkerSpec, writer: PredictionWriter, paths: list[Path], batch_size: int,
                   settings: RaySettings, progress: Callable[[int, int], None] | None = None) -> None:
    """Send `paths` through the actor pool; every image ends up in `writer` (adopted or failed)."""
    try:
        import ray
    except ImportError as error:
        raise SamPalError("--ray needs Ray: pip install 'sam2pal[ray]'") from error

    started_here = not ray.is_initialized()
    if started_here:
        local = settings.address is None
        ray.init(address=settings.address, num_cpus=os.cpu_count() if local else None, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI shows its own
    context.print_on_execution_start = False
    context.execution_options.preserve_order = True  # the same report order as the plain path, any worker count
    try:
        rows = [{"path": str(path), "stem": writer.reserve_stem(path)} for path in paths]
        dataset = ray.data.from_items(rows).map_batches(
            PredictWorker,
            fn_constructor_kwargs={"spec": spec},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=settings.workers),
            num_cpus=_worker_cpus(settings, started_here and settings.address is None),
            num_gpus=settings.gpus_per_worker or None,
        )  # Ray Data restarts a dead actor and retries its batches (max_restarts=-1, max_task_retries=-1)
        done = 0
        for row in dataset.iter_rows():
            if row["error"]:
                writer.add_failure(Path(row["path"]), row["error"])
            elif not writer.adopt(row["stem"]):
                writer.add_failure(Path(row["path"]), "the worker's record of this image is missing; run again")
            done += 1
            if progress is not None:
                progress(done, len(rows))
    finally:
        if started_here:
            ray.shutdown()
