"""SAM2 as an interactive image segmenter: clicks on one image, no memory.

This is what SAM2 does on the first frame a user clicks in a video: the image features get the
"no memory" embedding and the prompt decoder turns the points into a mask (the best of three
candidates for a single click).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from sam2pal.engine.frames import Encoder, Flat
from sam2pal.engine.propagate import full_resolution
from sam2pal.errors import SamPalError
from sam2pal.model.build import LoadedModel


class PointPrompter:
    """Masks from clicks, keeping the features of the last few images clicked on.

    A user clicks several times on one image; encoding it is nearly all the work (seconds on a
    CPU at 1024 px), the prompt decoder is milliseconds, so each image is encoded once.
    """

    def __init__(self, loaded: LoadedModel, images_kept: int = 4):
        self.loaded = loaded
        self.encoder = Encoder(loaded)
        self.images_kept = images_kept
        self._features: OrderedDict[str, Flat] = OrderedDict()
        self.encoded = 0

    def _flat(self, image: np.ndarray, key: str | None) -> Flat:
        flat = self._features.get(key) if key is not None else None
        if flat is None:
            flat = self.encoder.flatten(self.encoder.encode_images([image]))
            self.encoded += 1
            if key is not None:
                self._features[key] = flat
                while len(self._features) > self.images_kept:
                    self._features.popitem(last=False)
        else:
            self._features.move_to_end(key)
        return flat

    @torch.no_grad()
    def mask(self, image: np.ndarray, points: list[tuple[float, float, int]], key: str | None = None) -> np.ndarray:
        """Bool H×W mask from (x, y, label) clicks in image pixels; label 1 = inside, 0 = outside.

        `key` names the image (its path and modification time, say): the same key means the
        same pixels, so its features are reused.
        """
        if not points:
            raise SamPalError("click at least one point on the structure")
        height, width = image.shape[:2]
        size = self.loaded.image_size
        self.loaded.sam.eval()
        flat = self._flat(image, key)
        coords = torch.tensor([[(x * size / width, y * size / height) for x, y, _ in points]], dtype=torch.float32)
        labels = torch.tensor([[label for _, _, label in points]], dtype=torch.int32)
        prompt = {"point_coords": coords.to(self.loaded.device), "point_labels": labels.to(self.loaded.device)}
        with self.loaded.autocast():
            _, outputs, _, _ = self.loaded.sam._track_step(
                0, True, flat.feats, flat.pos, flat.sizes, prompt, None, {}, 1, False, None
            )
        return full_resolution(outputs[3], height, width)[0]
