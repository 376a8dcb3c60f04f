"""SAM2 as an interactive image segmenter: clicks on one image, no memory.

This is what SAM2 does on the first frame a user clicks in a video: the image features get the
"no memory" embedding and the prompt decoder turns the points into a mask (the best of three
candidates for a single click).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from sam2pal.engine.frames import Encoder, FeatureCache
from sam2pal.engine.propagate import full_resolution
from sam2pal.engine.tracking import prompt
from sam2pal.errors import SamPalError
from sam2pal.model.build import LoadedModel


class PointPrompter:
    """Masks from clicks, keeping the features of the last images clicked on.

    A user clicks several times on one image; decoding and encoding it is nearly all the work
    (seconds on a CPU at 1024 px), the prompt decoder is milliseconds, so each image is read and
    encoded once.
    """

    def __init__(self, loaded: LoadedModel, cache_bytes: int = 256 << 20, decoder_threads: int | None = None):
        self.loaded = loaded
        self.encoder = Encoder(loaded)
        self.cache = FeatureCache(cache_bytes)
        self.decoder_threads = decoder_threads  # None: torch's own number

    @torch.no_grad()
    def mask(self, points: list[tuple[float, float, int]], size: tuple[int, int], key: str,
             load: Callable[[], np.ndarray]) -> np.ndarray:
        """Bool mask of `size` (H, W) from (x, y, label) clicks in image pixels; label 1 = inside,
        0 = outside. `key` names the image's pixels (path and modification time, say); `load`
        reads them, called only when the key's features are not cached."""
        if not points:
            raise SamPalError("click at least one point on the structure")
        height, width = size
        side = self.loaded.image_size
        self.loaded.sam.eval()
        frame = self.cache.get(key)
        if frame is None:
            frame = self.encoder.encode_images([load()])
            self.cache.put(key, frame)
        flat = self.encoder.flatten(frame)
        coords = torch.tensor([[(x * side / width, y * side / height) for x, y, _ in points]], dtype=torch.float32)
        labels = torch.tensor([[label for _, _, label in points]], dtype=torch.int32)
        with _threads(self.decoder_threads), self.loaded.autocast():
            output = prompt(self.loaded.sam, flat, coords.to(self.loaded.device), labels.to(self.loaded.device))
        return full_resolution(output.best_low_res, height, width)[0]


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to `count` for a while (process-wide, so only for a process
    that does nothing else meanwhile, like the click process)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
