"""A full-resolution boolean mask kept as its bounding box: what a 24 MP photo needs.

A structure covers a small part of a big photo, so every output (COCO run lengths, area, box,
the 1-bit PNG, a review-size preview) is computed from the box alone; the full H×W array is only
built when a caller asks for `dense()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask


@dataclass(frozen=True)
class BoxMask:
    """mask[top:top+h, left:left+w] == crop, False elsewhere; an empty mask has a 0×0 crop."""

    height: int
    width: int
    top: int
    left: int
    crop: np.ndarray  # bool (h, w)

    @classmethod
    def empty(cls, height: int, width: int) -> "BoxMask":
        return cls(height, width, 0, 0, np.zeros((0, 0), dtype=bool))

    @classmethod
    def from_dense(cls, mask: np.ndarray) -> "BoxMask":
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
        return cls(mask.shape[0], mask.shape[1], 0, 0, mask).tight()

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def tight(self) -> "BoxMask":
        """The same mask with its box shrunk to the pixels that are set."""
        rows = np.flatnonzero(self.crop.any(axis=1)) if self.crop.size else np.zeros(0, dtype=int)
        if rows.size == 0:
            return BoxMask.empty(self.height, self.width)
        cols = np.flatnonzero(self.crop.any(axis=0))
        crop = self.crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return BoxMask(self.height, self.width, self.top + int(rows[0]), self.left + int(cols[0]), crop)

    def dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=bool)
        out[self.top : self.top + self.crop.shape[0], self.left : self.left + self.crop.shape[1]] = self.crop
        return out

    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    def bbox(self) -> list[float]:
        """COCO [x, y, w, h] of the set pixels, [0, 0, 0, 0] when there are none."""
        tight = self.tight()
        if tight.crop.size == 0:
            return [0.0, 0.0, 0.0, 0.0]
        return [float(tight.left), float(tight.top), float(tight.crop.shape[1]), float(tight.crop.shape[0])]

    def runs(self) -> list[int]:
        """COCO's uncompressed run lengths (down the columns, background first), as
        pycocotools.mask.encode of the dense mask gives them."""
        total = self.height * self.width
        tight = self.tight()
        if tight.crop.size == 0:
            return [total]
        padded = np.zeros((tight.crop.shape[0] + 2, tight.crop.shape[1]), dtype=np.int8)
        padded[1:-1] = tight.crop
        steps = np.diff(padded, axis=0).T  # (w, h + 1): +1 where a run starts in a column, -1 after it ends
        cols, rows = np.nonzero(steps == 1)
        starts = (tight.left + cols) * self.height + tight.top + rows
        cols, rows = np.nonzero(steps == -1)
        ends = (tight.left + cols) * self.height + tight.top + rows
        joined = ends[:-1] == starts[1:]  # a run down the last row goes on at the top of the next column
        starts = np.concatenate([starts[:1], starts[1:][~joined]])
        ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
        counts = np.empty(2 * starts.size, dtype=np.int64)
        counts[0] = starts[0]
        counts[2::2] = starts[1:] - ends[:-1]
        counts[1::2] = ends - starts
        tail = [total - int(ends[-1])] if ends[-1] < total else []
        return counts.tolist() + tail

    def rle(self) -> dict:
        """COCO compressed RLE with str counts, equal to `io.masks.encode_rle(self.dense())`."""
        rle = coco_mask.frPyObjects({"counts": self.runs(), "size": [self.height, self.width]}, self.height, self.width)
        return {"size": [self.height, self.width], "counts": rle["counts"].decode("ascii")}

    def image(self) -> Image.Image:
        """The mask as a full-size 1-bit image (PNG writes it small and fast)."""
        canvas = Image.new("1", (self.width, self.height), 0)
        if self.crop.size:
            canvas.paste(Image.fromarray(self.crop), (self.left, self.top))
        return canvas

    def scaled(self, height: int, width: int) -> "BoxMask":
        """The mask at another size (nearest pixel), for previews; only the box is resampled."""
        tight = self.tight()
        if (height, width) == self.shape or tight.crop.size == 0:
            return tight if (height, width) == self.shape else BoxMask.empty(height, width)
        sy, sx = height / self.height, width / self.width
        top, left = int(tight.top * sy), int(tight.left * sx)
        bottom = min(height, max(top + 1, round((tight.top + tight.crop.shape[0]) * sy)))
        right = min(width, max(left + 1, round((tight.left + tight.crop.shape[1]) * sx)))
        crop = Image.fromarray(tight.crop).resize((right - left, bottom - top), Image.NEAREST)
        return BoxMask(height, width, top, left, np.asarray(crop, dtype=bool))

    def rot90(self, turns: int) -> "BoxMask":
        """As np.rot90(self.dense(), turns): counter-clockwise quarter turns."""
        turns %= 4
        h, w = self.crop.shape
        if turns == 0:
            return self
        if self.crop.size == 0:
            return BoxMask.empty(*(self.shape if turns == 2 else self.shape[::-1]))
        crop = np.ascontiguousarray(np.rot90(self.crop, turns))
        if turns == 1:
            return BoxMask(self.width, self.height, self.width - self.left - w, self.top, crop)
        if turns == 2:
            return BoxMask(self.height, self.width, self.height - self.top - h, self.width - self.left - w, crop)
        return BoxMask(self.width, self.height, self.left, self.height - self.top - h, crop)

    def fliplr(self) -> "BoxMask":
        w = self.crop.shape[1]
        return BoxMask(self.height, self.width, self.top, self.width - self.left - w,
                       np.ascontiguousarray(self.crop[:, ::-1]))
