"""Prediction with an adapter library: each specimen segmented by the adapter its photo fits.

The selector sees the base model's features (`engine.selector`); specimens are then grouped by
the adapter chosen and each group is predicted by a copy of the base model carrying only that
adapter, so adding an adapter to the library can change which adapter a photo gets but never
what an adapter does. Photos no adapter is trusted with go to the base model and are flagged.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from sam2pal.engine.frames import Encoder
from sam2pal.engine.propagate import Decoding, ProgressFn, Propagator, load_specimen, predict_collection
from sam2pal.engine.qc import QCConfig
from sam2pal.engine.selector import Choice, choose, embed, floor
from sam2pal.errors import SamPalError
from sam2pal.io.templates import TemplateSet
from sam2pal.model.adapters import WEIGHTS_NAME, load_adapter
from sam2pal.model.build import LoadedModel, file_sha256
from sam2pal.model.library import AdapterLibrary


def library_identity(library: AdapterLibrary, model: LoadedModel, min_confidence: float) -> dict:
    """What the results depend on: every adapter's weights, and the threshold; refuses a library
    whose adapters were trained on another base model."""
    entries = library.entries()
    if not entries:
        raise SamPalError(f"--adapters {library.folder}: no adapter in it; add one with `sam2pal adapters add`")
    other = [e.name for e in entries if e.base_fingerprint != model.fingerprint]
    if other:
        raise SamPalError(f"--adapters {library.folder}: {', '.join(other)} trained on {entries[0].base_model}, "
                          f"not on --model {model.name}; pass --model {entries[0].base_model}")
    if not 0.0 <= min_confidence <= 1.0:
        raise SamPalError(f"--min-confidence {min_confidence} must be between 0 and 1")
    return {"min_confidence": min_confidence,  # not the folder: a library moved elsewhere gives the same masks
            "adapters": {e.name: file_sha256(library.adapter_dir(e.name) / WEIGHTS_NAME) for e in entries}}


def select_adapters(model: LoadedModel, library: AdapterLibrary, paths: list[Path], decoding: Decoding,
                    min_confidence: float, batch_size: int) -> dict[Path, Choice | None]:
    """The adapter for each photo; None for a photo that cannot be read (predicting it reports why)."""
    encoder = Encoder(model)
    references = {e.name: library.references(e.name) for e in library.entries()}
    floors = {name: floor(vectors) for name, vectors in references.items()}
    model_size = Decoding(decoding.min_side, decoding.min_side, decoding.max_pixels)
    choices: dict[Path, Choice | None] = {}
    for start in range(0, len(paths), batch_size):
        loaded = [load_specimen(path, model_size) for path in paths[start : start + batch_size]]
        good = [item for item in loaded if item.photo is not None]
        vectors = embed(encoder, [item.photo.image for item in good]) if good else np.zeros((0, 1))
        for item in loaded:
            choices[item.path] = None
        for item, vector in zip(good, vectors):
            choices[item.path] = choose(vector, references, min_confidence, floors)
    return choices


def predict_with_library(model: LoadedModel, templates: TemplateSet, library: AdapterLibrary, paths: list[Path],
                         writer, batch_size: int, decoding: Decoding, min_confidence: float,
                         qc: QCConfig | None, orientation: str, progress: ProgressFn | None = None) -> None:
    choices = select_adapters(model, library, paths, decoding, min_confidence, batch_size)
    groups: dict[str | None, list[Path]] = {}
    for path in paths:
        choice = choices[path]
        groups.setdefault(choice.adapter if choice is not None else None, []).append(path)
    records = {path.name: {"name": choice.adapter, "closest": choice.best, "confidence": round(choice.confidence, 4),
                           "like_its_photos": choice.inside}
               for path, choice in choices.items() if choice is not None}
    done = 0
    for name in sorted(groups, key=lambda n: (n is None, n or "")):
        carrier = model  # the base model itself for the photos no adapter is trusted with
        if name is not None:
            carrier = copy.deepcopy(model)
            load_adapter(carrier, library.adapter_dir(name))
        group = groups[name]

        def step(count: int, total: int, before: int = done) -> None:
            if progress is not None:
                progress(before + count, len(paths))

        predict_collection(Propagator(carrier, templates, qc=qc, orientation=orientation), group, writer, batch_size,
                           decoding, step, records)
        done += len(group)
