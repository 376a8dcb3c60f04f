"""Images in, SAM2 image features out: preprocessing, batched encoding and a bounded cache.

Everything downstream of the image encoder treats objects as the batch dimension, so a `Frame`
holds one or more images' features flattened the way SAM2's tracking code wants them, and can be
gathered to one row per (image, structure) pair without copying the encoder's work.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sam2pal.errors import SamPalError
from sam2pal.model.build import LoadedModel

# ImageNet statistics, as SAM2 was trained with
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(image: np.ndarray, image_size: int) -> torch.Tensor:
    """H×W×3 uint8 -> normalised 3×S×S float tensor, resized as SAM2's video loader does: exactly
    while a side is under four times the input size; beyond (a 2048 px review-size photo for a
    256 or 512 px model, a full-size template), PIL first box-reduces by an integer factor:
    three times as fast from 2048 to 256 px and within one grey level."""
    resized = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BICUBIC, reducing_gap=2.0))
    pixels = (resized / 255.0).astype(np.float32)
    return torch.from_numpy((pixels - _MEAN) / _STD).permute(2, 0, 1).contiguous()


def resize_masks(masks: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """Bool (N, H, W) at full resolution -> float (N, 1, S, S) binary, as SAM2 resizes mask prompts."""
    tensor = torch.as_tensor(np.asarray(masks)).float()[:, None]
    if tensor.shape[-2:] == (image_size, image_size):
        return tensor
    resized = torch.nn.functional.interpolate(
        tensor, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    return (resized >= 0.5).float()


@dataclass
class Frame:
    """Backbone features of a batch: three levels, each (B, C, h, w), finest first.

    `rows_per_image`: the rows come in runs of that many copies of one image (the objects of an
    image), which tracking uses to run image-only work once per image.
    """

    levels: list[torch.Tensor]
    rows_per_image: int = 1

    @property
    def batch(self) -> int:
        return self.levels[0].shape[0]

    def expand(self, count: int) -> "Frame":
        """One image shared by `count` objects without copying (the video predictor's trick)."""
        assert self.batch == 1
        return Frame([level.expand(count, -1, -1, -1) for level in self.levels], rows_per_image=count)

    def repeat_each(self, count: int) -> "Frame":
        """Every image `count` times in a row (image-major): one row per (image, object)."""
        if self.batch == 1:
            return self.expand(count)
        index = torch.arange(self.batch, device=self.levels[0].device).repeat_interleave(count)
        return Frame([level.index_select(0, index) for level in self.levels], rows_per_image=count)

    def nbytes(self) -> int:
        return sum(level.numel() * level.element_size() for level in self.levels)


@dataclass
class Flat:
    """A frame in the (HW, B, C) layout that SAM2's `_track_step` takes."""

    feats: list[torch.Tensor]
    pos: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    rows_per_image: int = 1  # as in the Frame it came from


class Encoder:
    """Runs SAM2's image encoder on batches and flattens features for tracking.

    Positional encodings depend only on the image size, so they are computed once.
    """

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self._pos: list[torch.Tensor] | None = None

    def encode(self, pixels: torch.Tensor) -> Frame:
        """(B, 3, S, S) normalised pixels -> features; gradients flow only if the encoder trains."""
        sam = self.loaded.sam
        with self.loaded.autocast():
            backbone = sam.forward_image(pixels.to(self.loaded.device))
        levels = list(backbone["backbone_fpn"][-sam.num_feature_levels :])
        if self._pos is None:
            self._pos = [p[:1].detach() for p in backbone["vision_pos_enc"][-sam.num_feature_levels :]]
        return Frame(levels)

    def encode_images(self, images: list[np.ndarray]) -> Frame:
        pixels = torch.stack([preprocess(image, self.loaded.image_size) for image in images])
        return self.encode(pixels)

    def flatten(self, frame: Frame) -> Flat:
        if self._pos is None:
            raise RuntimeError("encode an image before flattening features")
        batch = frame.batch
        feats = [level.flatten(2).permute(2, 0, 1) for level in frame.levels]
        pos = [p.to(frame.levels[0].dtype).flatten(2).permute(2, 0, 1).expand(-1, batch, -1) for p in self._pos]
        sizes = [(level.shape[-2], level.shape[-1]) for level in frame.levels]
        return Flat(feats, pos, sizes, frame.rows_per_image)


class FeatureCache:
    """Least-recently-used image features under a RAM budget, then optionally on disk.

    With a frozen encoder, a training epoch after the first only reads this cache; the budget
    keeps a large collection from filling RAM. Without `spill_dir` the oldest entries are dropped
    (and re-encoded when needed); with it they are written to a private folder inside
    `spill_dir` and read back, which at 1024 px on CPU takes milliseconds instead of seconds of
    encoding. The folder lasts as long as the cache (`close`).
    """

    def __init__(self, max_bytes: int = 2 << 30, spill_dir: str | Path | None = None):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Frame] = OrderedDict()
        self._bytes = 0
        self._on_disk: set[str] = set()
        self.hits = 0
        self.misses = 0
        self.disk_reads = 0
        self._disk: Path | None = None
        self._device = torch.device("cpu")  # where spilled features are read back to
        if spill_dir is not None:
            try:
                Path(spill_dir).mkdir(parents=True, exist_ok=True)
                self._disk = Path(tempfile.mkdtemp(prefix="sam2pal-features-", dir=spill_dir))
            except OSError as exc:
                raise SamPalError(f"--feature-cache-dir {spill_dir}: cannot write there ({exc.strerror}); "
                                  "pick a writable folder") from exc
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._disk, True)

    def get(self, key: str) -> Frame | None:
        frame = self._items.get(key)
        if frame is None and key in self._on_disk:
            frame = self._read(key)
            if frame is not None:
                self.disk_reads += 1
                self._remember(key, frame)
        if frame is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return frame

    def put(self, key: str, frame: Frame) -> None:
        self._remember(key, Frame([level.detach() for level in frame.levels]))

    def close(self) -> None:
        """Delete the spill folder (also done when the cache is garbage-collected)."""
        if self._disk is not None:
            self._cleanup()
            self._on_disk.clear()
            self._disk = None  # later evictions drop features, as without a spill folder

    def _remember(self, key: str, frame: Frame) -> None:
        if key in self._items:
            self._bytes -= self._items.pop(key).nbytes()
        self._items[key] = frame
        self._bytes += frame.nbytes()
        while self._bytes > self.max_bytes and len(self._items) > 1:
            dropped_key, dropped = self._items.popitem(last=False)
            self._bytes -= dropped.nbytes()
            self._spill(dropped_key, dropped)

    def _path(self, key: str) -> Path:
        return self._disk / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".safetensors")

    def _spill(self, key: str, frame: Frame) -> None:
        if self._disk is None or key in self._on_disk:
            return
        path = self._path(key)
        try:  # a key counts as on disk only once its file is whole, and the folder is ours alone
            save_file({str(i): level.contiguous().cpu() for i, level in enumerate(frame.levels)}, str(path))
        except OSError as exc:  # a full disk costs re-encoding, never the run
            path.unlink(missing_ok=True)
            warnings.warn(f"feature cache: cannot write {path} ({exc.strerror}); dropping features instead")
            return
        self._on_disk.add(key)
        self._device = frame.levels[0].device

    def _read(self, key: str) -> Frame | None:
        try:
            tensors = load_file(str(self._path(key)), device=str(self._device))
        except (OSError, SafetensorError):  # gone or damaged: encode again
            self._on_disk.discard(key)
            return None
        return Frame([tensors[str(i)] for i in range(len(tensors))])

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
