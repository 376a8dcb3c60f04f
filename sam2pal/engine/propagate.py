"""Propagate every structure of the templates to a collection of specimens.

The template memory for all K structures is encoded once; specimens go through the image encoder
in batches and all K structures of every specimen in the batch go through memory attention and
the mask decoder in one pass (rows = specimens × structures).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from sam2pal.engine.frames import Encoder, FeatureCache, Frame, resize_masks
from sam2pal.engine.orientation import SEARCHES, orient, restore_box, turned_shape
from sam2pal.engine.qc import QCConfig, StructureQC, TemplateTruth, assess, round_trip_iou
from sam2pal.engine.tracking import Memory, TrackOutput, condition_on_mask, repeat_memory, select_rows, track
from sam2pal.engine.upsample import box_masks
from sam2pal.errors import SamPalError
from sam2pal.io.boxmask import BoxMask
from sam2pal.io.images import Photo, image_header, load_photo, working_scale
from sam2pal.io.templates import TemplateSet
from sam2pal.model.build import LoadedModel


@dataclass
class Prediction:
    """One specimen's result: the model's low-resolution masks and a confidence per structure.

    The full-resolution masks are made from the logits when asked for (`boxes`), not kept: a
    speckled 24 MP mask is megabytes of runs, so a batch of predictions waiting for the writer
    would grow with the batch size, while its logits are K low-resolution maps (64² floats at
    256 px, 256² at 1024 px) whatever the photo."""

    logits: torch.Tensor  # (K, 1, h, w) float32 on the CPU, of the specimen as the model saw it (turned)
    full_shape: tuple[int, int]  # (height, width) of the upright photo the masks are made at
    scores: list[float]  # the decoder's IoU estimate, 0 when the object score says absent
    object_scores: list[float]  # sigmoid of SAM2's object score
    qc: list[StructureQC] | None = None
    orientation: str = "rot0"

    def boxes(self) -> list[BoxMask]:
        """K masks at the photo's full size, upright, each kept as its bounding box."""
        height, width = turned_shape(self.full_shape, self.orientation)
        return [restore_box(mask, self.orientation) for mask in box_masks(self.logits, height, width)]

    def masks(self) -> np.ndarray:
        """bool (K, H, W): the masks as full arrays (gigabytes for many structures on big photos)."""
        return np.stack([box.dense() for box in self.boxes()])


def template_frame(encoder: Encoder, template_set: TemplateSet, index: int, cache: FeatureCache | None) -> Frame:
    """Features of template `index`, cached under its file name."""
    key = f"template:{template_set.templates[index].name}"
    frame = cache.get(key) if cache is not None else None
    if frame is None:
        frame = encoder.encode_images([template_set.templates[index].image])
        if cache is not None:
            cache.put(key, frame)
    return frame


def template_memories(
    encoder: Encoder, template_set: TemplateSet, indices: list[int], cache: FeatureCache | None = None
) -> list[Memory]:
    """One conditioning memory (K structures) per template in `indices`."""
    sam = encoder.loaded.sam
    size = encoder.loaded.image_size
    count = len(template_set.structures)
    memories = []
    for index in indices:
        frame = template_frame(encoder, template_set, index, cache)
        masks = resize_masks(template_set.mask_stack(index), size).to(encoder.loaded.device)
        with encoder.loaded.autocast():
            memories.append(condition_on_mask(sam, encoder.flatten(frame.expand(count)), masks))
    return memories


def segment(encoder: Encoder, frame: Frame, memories: list[Memory], count: int) -> TrackOutput:
    """Track `count` structures on every image of `frame`; rows are image-major."""
    flat = encoder.flatten(frame.repeat_each(count))
    with encoder.loaded.autocast():
        return track(encoder.loaded.sam, flat, [repeat_memory(m, frame.batch) for m in memories])


Groups = list[tuple[list[int], list[int]]]  # (structure rows, indices into the memories), TemplateSet.memory_groups


def segment_groups(encoder: Encoder, frame: Frame, memories: list[Memory], groups: Groups, count: int) -> TrackOutput:
    """`segment`, where each group of structures sees only the memories of the templates that
    annotate it; rows stay image-major over all `count` structures. A structure in no group
    comes out absent (no memory can say where it is)."""
    if len(groups) == 1 and groups[0][0] == list(range(count)):
        return segment(encoder, frame, [memories[i] for i in groups[0][1]], count)
    parts = []
    for rows, sources in groups:
        index = torch.tensor(rows, device=encoder.loaded.device)
        chosen = [select_rows(memories[i], index) for i in sources]
        parts.append((rows, segment(encoder, frame, chosen, len(rows))))
    return _merge(parts, frame.batch, count)


def _merge(parts: list[tuple[list[int], TrackOutput]], batch: int, count: int) -> TrackOutput:
    fields = {}
    for name, fill in (("low_res_logits", -1024.0), ("high_res_logits", -1024.0), ("obj_ptr", 0.0),
                       ("object_score_logits", -10.0), ("iou", 0.0)):
        sample = getattr(parts[0][1], name)
        merged = torch.full((batch, count, *sample.shape[1:]), fill, dtype=sample.dtype, device=sample.device)
        for rows, output in parts:
            value = getattr(output, name)
            merged[:, rows] = value.reshape(batch, len(rows), *value.shape[1:])
        fields[name] = merged.reshape(batch * count, *sample.shape[1:])
    return TrackOutput(**fields)


def full_resolution(low_res_logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(K, 1, h, w) logits -> bool (K, H, W), as bilinear upsampling and > 0 give them."""
    return np.stack([mask.dense() for mask in box_masks(low_res_logits, height, width)])


class Propagator:
    """Holds the template memory and predicts batches of specimens from it.

    With `qc` on, every prediction also gets the round-trip quality check; with an orientation
    search, every turn of a specimen is predicted and the one with the best QC score is kept.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        template_set: TemplateSet,
        encoder: Encoder | None = None,
        qc: QCConfig | None = None,
        orientation: str = "none",
    ):
        if orientation not in SEARCHES:
            raise SamPalError(f"--orientation-search {orientation!r}: use one of {', '.join(SEARCHES)}")
        if orientation != "none" and qc is None:
            raise SamPalError("--orientation-search needs the quality check; drop --no-qc")
        self.loaded = loaded
        self.structures = list(template_set.structures)
        self.encoder = encoder or Encoder(loaded)
        self.qc = qc
        self.orientations = SEARCHES[orientation]
        loaded.sam.eval()
        indices = list(range(len(template_set.templates)))
        cache = FeatureCache()
        self.groups = template_set.memory_groups(indices)
        with torch.no_grad():
            self.memories = template_memories(self.encoder, template_set, indices, cache)
            self.truths = [self._truth(template_set, i, cache) for i in indices] if qc is not None else []

    def _truth(self, template_set: TemplateSet, index: int, cache: FeatureCache) -> TemplateTruth:
        side = self.loaded.image_size // 4
        masks = resize_masks(template_set.mask_stack(index), side)[:, 0] > 0
        annotated = torch.tensor([name in template_set.templates[index].masks for name in self.structures])
        return TemplateTruth(template_frame(self.encoder, template_set, index, cache), masks.to(self.loaded.device), annotated.to(self.loaded.device))

    @torch.no_grad()
    def logits(self, images: list[np.ndarray]) -> TrackOutput:
        """Low-resolution outputs for a batch, (B·K) rows; the correctness anchor compares these."""
        frame = self.encoder.encode_images(images)
        return segment_groups(self.encoder, frame, self.memories, self.groups, len(self.structures))

    @torch.no_grad()
    def predict(self, images: list[np.ndarray], shapes: list[tuple[int, int]] | None = None) -> list[Prediction]:
        """Every image in every searched orientation goes through one encoder batch.

        `shapes`: the (height, width) each image's masks are made at, when the image was decoded
        smaller than the photo (`io.images.load_photo`); by default the image's own.
        """
        count = len(self.structures)
        shapes = shapes or [image.shape[:2] for image in images]
        turned = [orient(image, name) for image in images for name in self.orientations]
        frame = self.encoder.encode_images(turned)
        output = segment_groups(self.encoder, frame, self.memories, self.groups, count)
        qc = None
        if self.qc is not None:
            trip = round_trip_iou(self.encoder, frame, output, self.truths, count)
            qc = assess(output, trip, self.truths, count, self.qc)
        present = torch.sigmoid(output.object_score_logits.float()[:, 0])
        iou = output.iou.float() * (output.object_score_logits.float()[:, 0] > 0)
        low_res = output.low_res_logits.detach().float().cpu()
        results = []
        for b, image in enumerate(images):
            choice = b * len(self.orientations)
            if qc is not None and len(self.orientations) > 1:
                candidates = range(choice, choice + len(self.orientations))
                choice = max(candidates, key=lambda v: _qc_score(qc[v]))
            name = self.orientations[choice - b * len(self.orientations)]
            rows = slice(choice * count, (choice + 1) * count)
            results.append(Prediction(low_res[rows].clone(), tuple(shapes[b]), iou[rows].tolist(),
                                      present[rows].tolist(), qc[choice] if qc is not None else None, name))
        return results


def _qc_score(structures: list[StructureQC]) -> float:
    """Mean round-trip IoU over structures that have one; orientation search maximises it."""
    values = [s.round_trip_iou for s in structures if s.round_trip_iou is not None]
    return float(np.mean(values)) if values else 0.0


@dataclass
class Loaded:
    path: Path
    photo: Photo | None  # at the model's scale when `review` is set, else also the review copy
    error: str | None
    review: Callable[[], np.ndarray] | None = None  # decodes the review-size copy, on the writer's thread


@dataclass(frozen=True)
class Decoding:
    """How specimen photos are decoded: no smaller than the model's input on the short side and
    `review_side` on the long side (None: full size), and refused above `max_pixels`."""

    min_side: int
    review_side: int | None = 2048
    max_pixels: int = 100_000_000


def load_specimen(path: Path, decoding: Decoding) -> Loaded:
    """A specimen decoded for prediction, or the one-line reason it cannot be.

    A photo larger than the review size (2048 px) is decoded here only at the model's scale (a
    JPEG at its DCT scale), and its review copy, which only the overlay needs, is decoded again
    by the writer. So the batches decoded ahead and waiting for the model hold small images; the
    cost is a second, reduced decode (`sam2pal bench --io` times both)."""
    try:
        size = image_header(path).size
        view, review = (working_scale(size, decoding.min_side, side) for side in (0, decoding.review_side))
        if review >= 1.0 or review <= view:  # a photo no larger than the review size is decoded once, whole
            return Loaded(path, load_photo(path, decoding.min_side, decoding.review_side, decoding.max_pixels), None)
        photo = load_photo(path, decoding.min_side, 0, decoding.max_pixels)
        return Loaded(path, photo, None,
                      lambda: load_photo(path, decoding.min_side, decoding.review_side, decoding.max_pixels).image)
    except SamPalError as exc:
        return Loaded(path, None, str(exc))


def prefetched_batches(paths: list[Path], batch_size: int, decoding: Decoding) -> Iterator[list[Loaded]]:
    """Decode the next batch in background threads while the model works on this one."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        ahead: list[Future] = []
        for index, batch in enumerate(batches):
            if index == 0:
                ahead = [pool.submit(load_specimen, p, decoding) for p in batch]
            current = [future.result() for future in ahead]
            if index + 1 < len(batches):
                ahead = [pool.submit(load_specimen, p, decoding) for p in batches[index + 1]]
            yield current


ProgressFn = Callable[[int, int], None]
WriteFn = Callable[[Loaded, Prediction, float], None]


def predict_loaded(propagator: Propagator, batch: list[Loaded], write: WriteFn) -> None:
    """Predict the decoded specimens of a batch and hand each result to `write` (with seconds
    per specimen); the ones that could not be decoded are left to the caller."""
    good = [item for item in batch if item.photo is not None]
    if good:
        start = time.perf_counter()
        predictions = propagator.predict([item.photo.image for item in good], [item.photo.full_shape for item in good])
        seconds = (time.perf_counter() - start) / len(good)
        for item, prediction in zip(good, predictions):
            write(item, prediction, seconds)


def record_fields(prediction: Prediction) -> dict:
    """What a writer keeps of a prediction besides the masks and scores."""
    quality = [asdict(q) for q in prediction.qc] if prediction.qc is not None else None
    return {"quality": quality, "orientation": prediction.orientation}


def predict_collection(
    propagator: Propagator,
    paths: list[Path],
    writer,
    batch_size: int = 4,
    decoding: Decoding | None = None,
    progress: ProgressFn | None = None,
    adapters: dict[str, dict] | None = None,
) -> None:
    """Predict `paths` in batches and hand each result to `writer` as it comes; `adapters`
    says per file name which library adapter this is (recorded with the image).

    Memory stays bounded whatever the collection size: one batch is held at a time, as small
    decodes and the model's logits; the writer makes each photo's full-size masks on its own
    threads (`Prediction.boxes`), so neither the batch size nor the photo's size adds up. A file that
    cannot be read is recorded as a failure and the batch goes on without it.
    """
    decoding = decoding or Decoding(propagator.loaded.image_size)

    def write(item: Loaded, prediction: Prediction, seconds: float) -> None:
        writer.add(item.path, item.photo.image, prediction.boxes, prediction.scores, seconds, **record_fields(prediction),
                   adapter=(adapters or {}).get(item.path.name), review=item.review)

    done = 0
    for batch in prefetched_batches(paths, batch_size, decoding):
        for item in batch:
            if item.error is not None:
                writer.add_failure(item.path, item.error)
        predict_loaded(propagator, batch, write)
        done += len(batch)
        if progress is not None:
            progress(done, len(paths))
