"""Where a fine-tune's image features come from: the feature cache, or the image encoder.

With the encoder frozen (the default) every image is encoded once and its features cached, so
later epochs skip the encoder; with LoRA on the encoder features change every step and nothing
is cached. Specimens are read from disk as they are needed; one that cannot be read is skipped
with a warning, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from sam2pal.engine.frames import Encoder, FeatureCache, Frame, resize_masks
from sam2pal.engine.propagate import template_frame
from sam2pal.engine.supervised import Annotated
from sam2pal.errors import SamPalError
from sam2pal.io.images import load_image
from sam2pal.io.templates import TemplateSet


class TrainingFeatures:
    def __init__(self, encoder: Encoder, templates: TemplateSet, labels: TemplateSet | None, trains_encoder: bool,
                 cache_bytes: int, cache_dir: Path | None, max_pixels: int, warn: Callable[[str], None]) -> None:
        self.encoder = encoder
        self.templates = templates
        self.labels = labels
        self.trains_encoder = trains_encoder
        self.cache = None if trains_encoder else FeatureCache(cache_bytes, cache_dir)
        self.max_pixels = max_pixels
        self.warn = warn
        self.skipped: list[str] = []
        self._masks: dict[tuple[str, int], torch.Tensor] = {}  # (templates|labels, index) -> masks at model size

    def _encoding(self) -> torch.set_grad_enabled:
        """Encoder gradients only when the encoder trains, and never inside validation's no_grad."""
        return torch.set_grad_enabled(self.trains_encoder and torch.is_grad_enabled())

    def specimen(self, path: Path) -> Frame | None:
        """An unlabelled specimen's features; None when it cannot be read (warned once)."""
        key = str(path)
        if key in self.skipped:
            return None
        frame = self.cache.get(key) if self.cache is not None else None
        if frame is None:
            try:
                image = load_image(path, self.max_pixels)
            except SamPalError as exc:
                self.skipped.append(key)
                self.warn(str(exc))
                return None
            with self._encoding():
                frame = self.encoder.encode_images([image])
            if self.cache is not None:
                self.cache.put(key, frame)
        return frame

    def template(self, index: int) -> Frame:
        with self._encoding():
            return template_frame(self.encoder, self.templates, index, self.cache)

    def label(self, index: int) -> Frame:
        label = self.labels.templates[index]
        key = f"label:{label.path}"
        frame = self.cache.get(key) if self.cache is not None else None
        if frame is None:
            with self._encoding():
                frame = self.encoder.encode_images([label.image])
            if self.cache is not None:
                self.cache.put(key, frame)
        return frame

    def annotated(self, group: TemplateSet, index: int, frame: Frame) -> Annotated:
        """`frame` with what `group`'s image `index` says of each structure, at the model's size;
        the masks are resized once, not at every supervised step (templates may be 24 MP)."""
        key = ("templates" if group is self.templates else "labels", index)
        if key not in self._masks:
            loaded = self.encoder.loaded
            self._masks[key] = resize_masks(group.mask_stack(index), loaded.image_size).to(loaded.device)
        return Annotated(frame, self._masks[key], group.annotated(index))

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
