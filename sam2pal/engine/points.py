"""SAM2 as an interactive image segmenter: clicks on one image, no memory.

This is what SAM2 does on the first frame a user clicks in a video: the image features get the
"no memory" embedding and the prompt decoder turns the points into a mask (the best of three
candidates for a single click).
"""

from __future__ import annotations

import numpy as np
import torch

from sam2pal.engine.frames import Encoder
from sam2pal.engine.propagate import full_resolution
from sam2pal.errors import SamPalError
from sam2pal.model.build import LoadedModel


@torch.no_grad()
def mask_from_points(loaded: LoadedModel, image: np.ndarray, points: list[tuple[float, float, int]]) -> np.ndarray:
    """Bool H×W mask from (x, y, label) clicks in image pixels; label 1 = inside, 0 = outside."""
    if not points:
        raise SamPalError("click at least one point on the structure")
    height, width = image.shape[:2]
    size = loaded.image_size
    encoder = Encoder(loaded)
    loaded.sam.eval()
    flat = encoder.flatten(encoder.encode_images([image]))
    coords = torch.tensor([[(x * size / width, y * size / height) for x, y, _ in points]], dtype=torch.float32)
    labels = torch.tensor([[label for _, _, label in points]], dtype=torch.int32)
    prompt = {"point_coords": coords.to(loaded.device), "point_labels": labels.to(loaded.device)}
    with loaded.autocast():
        _, outputs, _, _ = loaded.sam._track_step(0, True, flat.feats, flat.pos, flat.sizes, prompt, None, {}, 1, False, None)
    return full_resolution(outputs[3], height, width)[0]
