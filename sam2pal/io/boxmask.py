"""A full-resolution boolean mask kept as its bounding box: what a 24 MP photo needs.

A structure covers a small part of a big photo, so every output (COCO run lengths, area, box,
the 1-bit PNG, a review-size preview) is computed from the box alone; the full H×W array is only
built when a caller asks for `dense()`. A mask comes either as the box's pixels (`crop`) or as
the runs of set rows down each column of the box (what upsampling finds), and each form is built
from the other only when a use needs it: COCO run lengths, area, box and previews come straight
from runs, so a speckled mask over a whole 24 MP photo never has its 24 M pixels visited for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as coco_mask


@dataclass(frozen=True)
class ColumnRuns:
    """Set pixels as runs: rows [begin, end) of column `column`, sorted by column, then row."""

    column: np.ndarray  # int (n,)
    begin: np.ndarray  # int (n,)
    end: np.ndarray  # int (n,), > begin


_NO_RUNS = ColumnRuns(*(np.zeros(0, dtype=np.int64) for _ in range(3)))


def _alternating_lengths(starts: np.ndarray, ends: np.ndarray, total: int) -> np.ndarray:
    """Background, foreground, background… lengths of a flat run of `total` pixels whose set
    pixels are [starts[i], ends[i]), sorted; the last is the (possibly empty) background after."""
    lengths = np.empty(2 * starts.size + 1, dtype=np.int64)
    lengths[0] = starts[0]
    lengths[1:-1:2] = ends - starts
    lengths[2:-1:2] = starts[1:] - ends[:-1]
    lengths[-1] = total - ends[-1]
    return lengths


def _sweep_down(switches: np.ndarray) -> np.ndarray:
    """Row i of the result is the XOR of switches' rows 0..i (the last row of switches is dropped)."""
    out = np.empty((switches.shape[0] - 1, switches.shape[1]), dtype=np.uint8)
    state = np.zeros(switches.shape[1], dtype=np.uint8)
    for row in range(out.shape[0]):
        np.bitwise_xor(state, switches[row], out=state)
        out[row] = state
    return out


class BoxMask:
    """mask[top:top+h, left:left+w] == crop, False elsewhere; an empty mask has a 0×0 crop."""

    def __init__(self, height: int, width: int, top: int = 0, left: int = 0, crop: np.ndarray | None = None,
                 runs: ColumnRuns | None = None) -> None:
        if (crop is None) == (runs is None):
            raise ValueError("a BoxMask is made from its crop or from its runs, exactly one")
        self.height, self.width = int(height), int(width)
        if runs is not None:
            if runs.column.size == 0:
                top, left, crop, runs = 0, 0, np.zeros((0, 0), dtype=bool), None
            else:  # the runs' own box
                top, left = int(runs.begin.min()), int(runs.column[0])
                self._shape = (int(runs.end.max()) - top, int(runs.column[-1]) + 1 - left)
        self.top, self.left = int(top), int(left)
        self._runs = runs
        self._crop = None if crop is None else np.asarray(crop, dtype=bool)
        if self._crop is not None:
            self._shape = self._crop.shape

    @classmethod
    def empty(cls, height: int, width: int) -> "BoxMask":
        return cls(height, width, crop=np.zeros((0, 0), dtype=bool))

    @classmethod
    def from_dense(cls, mask: np.ndarray) -> "BoxMask":
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
        return cls(mask.shape[0], mask.shape[1], crop=mask).tight()

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def crop(self) -> np.ndarray:
        """The box's pixels. Built from the runs each time they are asked for and not kept: a
        speckled mask over a 24 MP photo is 24 MB of pixels, and writer threads hold several
        masks at once."""
        if self._crop is not None:
            return self._crop
        return _sweep_down(self._switches(0)).view(bool)

    def packed_rows(self) -> tuple[int, np.ndarray]:
        """The box's rows packed 8 pixels to a byte (most significant bit first), aligned to the
        image's columns as a 1-bit PNG row is: (index of the first byte, rows × bytes)."""
        shift = self.left % 8
        if self._crop is not None:
            padded = np.zeros((self._crop.shape[0], shift + self._crop.shape[1]), dtype=bool)
            padded[:, shift:] = self._crop
            return self.left // 8, np.packbits(padded, axis=1)
        return self.left // 8, _sweep_down(np.packbits(self._switches(shift), axis=1))

    def _switches(self, shift: int) -> np.ndarray:
        """(rows + 1, shift + columns) uint8: 1 where a column of the box switches on or off.

        Sweeping down the rows with XOR turns these into the pixels, row-major from the start:
        filling each column and then transposing the result to rows costs six times as much at
        24 MP. A run that ends where the next one in its column begins would switch that row
        twice, so such runs are joined first."""
        runs, (rows, cols) = self._runs, self._shape
        column = runs.column - self.left + shift
        touching = (runs.end[:-1] == runs.begin[1:]) & (column[:-1] == column[1:])
        first = np.concatenate([[True], ~touching])
        last = np.concatenate([~touching, [True]])
        switches = np.zeros((rows + 1, shift + cols), dtype=np.uint8)
        switches[runs.begin[first] - self.top, column[first]] = 1
        switches[runs.end[last] - self.top, column[last]] = 1
        return switches

    def column_runs(self) -> ColumnRuns:
        """The set pixels as runs down the columns, in full-image rows and columns."""
        if self._runs is not None:
            return self._runs
        if self.crop.size == 0:
            return _NO_RUNS
        padded = np.zeros((self.crop.shape[0] + 2, self.crop.shape[1]), dtype=np.int8)
        padded[1:-1] = self.crop
        steps = np.diff(padded, axis=0).T  # (w, h + 1): +1 where a run starts in a column, -1 after it ends
        cols, begin = np.nonzero(steps == 1)
        end = np.nonzero(steps == -1)[1]
        return ColumnRuns(cols + self.left, begin + self.top, end + self.top)

    def tight(self) -> "BoxMask":
        """The same mask with its box shrunk to the pixels that are set."""
        if self._runs is not None:
            return self
        rows = np.flatnonzero(self.crop.any(axis=1)) if self.crop.size else np.zeros(0, dtype=int)
        if rows.size == 0:
            return BoxMask.empty(self.height, self.width)
        cols = np.flatnonzero(self.crop.any(axis=0))
        crop = self.crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return BoxMask(self.height, self.width, self.top + int(rows[0]), self.left + int(cols[0]), crop)

    def dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=bool)
        crop = self.crop
        out[self.top : self.top + crop.shape[0], self.left : self.left + crop.shape[1]] = crop
        return out

    def area(self) -> int:
        if self._runs is not None:
            return int((self._runs.end - self._runs.begin).sum())
        return int(np.count_nonzero(self.crop))

    def bbox(self) -> list[float]:
        """COCO [x, y, w, h] of the set pixels, [0, 0, 0, 0] when there are none."""
        tight = self.tight()
        if tight._shape[0] * tight._shape[1] == 0:
            return [0.0, 0.0, 0.0, 0.0]
        return [float(tight.left), float(tight.top), float(tight._shape[1]), float(tight._shape[0])]

    def runs(self) -> list[int]:
        """COCO's uncompressed run lengths (down the columns, background first), as
        pycocotools.mask.encode of the dense mask gives them."""
        total = self.height * self.width
        found = self.column_runs()
        if found.column.size == 0:
            return [total]
        starts = found.column.astype(np.int64) * self.height + found.begin
        ends = found.column.astype(np.int64) * self.height + found.end
        joined = ends[:-1] == starts[1:]  # runs that touch (down a row boundary or into the next column)
        starts = np.concatenate([starts[:1], starts[1:][~joined]])
        ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
        counts = _alternating_lengths(starts, ends, total)
        return counts[:-1].tolist() if counts[-1] == 0 else counts.tolist()

    def rle(self) -> dict:
        """COCO compressed RLE with str counts, equal to `io.masks.encode_rle(self.dense())`."""
        rle = coco_mask.frPyObjects({"counts": self.runs(), "size": [self.height, self.width]}, self.height, self.width)
        return {"size": [self.height, self.width], "counts": rle["counts"].decode("ascii")}

    def scaled(self, height: int, width: int) -> "BoxMask":
        """The mask at another size, each pixel taken from the one under its centre (nearest), for
        previews; computed from the runs, so only the preview's pixels are visited."""
        if (height, width) == self.shape:
            return self
        found = self.column_runs()
        # full-size row and column under the centre of every preview row and column
        rows = np.minimum(((np.arange(height) + 0.5) * self.height / height).astype(np.int64), self.height - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * self.width / width).astype(np.int64), self.width - 1)
        source = np.searchsorted(found.column, cols, side="left")
        stop = np.searchsorted(found.column, cols, side="right")
        counts = stop - source
        picked = np.repeat(np.arange(width), counts)  # preview column of every run it samples
        offsets = np.cumsum(counts) - counts  # where each preview column's runs start in `picked`
        index = np.repeat(source - offsets, counts) + np.arange(picked.size)
        begin = np.searchsorted(rows, found.begin[index], side="left")
        end = np.searchsorted(rows, found.end[index], side="left")
        keep = end > begin
        return BoxMask(height, width, runs=ColumnRuns(picked[keep], begin[keep], end[keep]))

    def rot90(self, turns: int) -> "BoxMask":
        """As np.rot90(self.dense(), turns): counter-clockwise quarter turns."""
        turns %= 4
        if turns == 0:
            return self
        if self.area() == 0:
            return BoxMask.empty(*(self.shape if turns == 2 else self.shape[::-1]))
        h, w = self._shape
        crop = np.ascontiguousarray(np.rot90(self.crop, turns))
        if turns == 1:
            return BoxMask(self.width, self.height, self.width - self.left - w, self.top, crop)
        if turns == 2:
            return BoxMask(self.height, self.width, self.height - self.top - h, self.width - self.left - w, crop)
        return BoxMask(self.width, self.height, self.left, self.height - self.top - h, crop)

    def fliplr(self) -> "BoxMask":
        return BoxMask(self.height, self.width, self.top, self.width - self.left - self._shape[1],
                       np.ascontiguousarray(self.crop[:, ::-1]))
