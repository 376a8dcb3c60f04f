"""Full-resolution masks from SAM2's low-resolution logits, inside each structure's box only.

`F.interpolate(..., mode="bilinear")` to a 24 MP photo makes a 96 MB float map per structure,
almost all of it far from the structure. A pixel can only be set where one of its four source
logits is positive, so only that box is computed, and with the same arithmetic PyTorch's CPU
kernel uses, so the masks are bit for bit those of the full-size call:

    per axis   src = fma(in/out, i + 0.5, -0.5), clamped at 0;  i0 = floor(src), i1 = i0 + 1
               (last index repeated), λ1 = src - i0, λ0 = 1 - λ1            (all float32)
    per pixel  row = fma(x[i0], λ0w, x[i1]·λ1w)  along the width, then
               out = fma(row0, λ0h, row1·λ1h)    along the height;  mask = out > 0

The kernel's order of operations is a build detail (fused multiply-adds or not), so the first
call checks both variants against F.interpolate on a probe and uses the one that is exact; if
neither is, every mask goes through F.interpolate as before.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from sam2pal.io.boxmask import BoxMask, ColumnRuns

_F32 = np.float32
_TINY = 128  # outputs with height + width <= 128 take another PyTorch kernel: left to it


@functools.lru_cache(maxsize=64)
def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and weights λ0, λ1 of every output index along one axis."""
    scale = _F32(n_in) / _F32(n_out)
    centres = np.arange(n_out, dtype=_F32) + _F32(0.5)
    src = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(_F32)  # one rounding: fma
    src = np.maximum(src, _F32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lambda1 = np.minimum(np.maximum(src - i0.astype(_F32), _F32(0)), _F32(1))
    lambda0 = _F32(1) - lambda1
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, lambda0.astype(_F32), lambda1.astype(_F32)


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a·b + c rounded once, as a fused multiply-add gives it.

    a·b is exact in float64; the sum is rounded to float64 and then to float32, which is wrong
    only where the float64 sum lands exactly half-way between two float32 values. The exact
    rounding error of the sum (TwoSum) says on which side the true value lies.
    """
    product = a.astype(np.float64) * b.astype(np.float64)
    addend = c.astype(np.float64)
    total = product + addend
    back = total - product
    error = (product - (total - back)) + (addend - back)
    result = total.astype(_F32)
    gap = total - result.astype(np.float64)
    neighbour = np.nextafter(result, np.where(gap > 0, np.inf, -np.inf).astype(_F32))
    tie = (gap != 0) & (total == (result.astype(np.float64) + neighbour.astype(np.float64)) / 2) & (error != 0)
    beyond = tie & (np.sign(error) == np.sign(gap))
    return np.where(beyond, neighbour, result)


def _plain32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return a * b + c


_VARIANTS = {"fma": _fma32, "plain": _plain32}


def _values(logits: np.ndarray, height: int, width: int, combine, rows: slice, cols: slice) -> np.ndarray:
    """The float32 output of the bilinear kernel on rows × cols of the (height, width) result."""
    y0, y1, a0, a1 = (part[rows] for part in _axis(logits.shape[0], height))
    x0, x1, b0, b1 = (part[cols] for part in _axis(logits.shape[1], width))
    low, high = int(min(y0.min(), y1.min())), int(max(y0.max(), y1.max())) + 1
    band = logits[low:high]
    across = combine(band[:, x0], b0, band[:, x1] * b1)  # each source row interpolated along the width
    top, bottom = across[y0 - low], across[y1 - low]
    return combine(top, a0[:, None], bottom * a1[:, None])


def _runs(logits: np.ndarray, height: int, width: int, rows: slice, cols: slice) -> ColumnRuns:
    """Where `_values(..., _fma32, ...) > 0` on rows × cols, as runs down the columns, without
    computing every pixel.

    Output rows come in segments that share their two source rows; inside one, λ0h falls and λ1h
    rises, so down a column the sign of fma(row0, λ0h, row1·λ1h) changes at most once (from the
    signs of row0 and row1). Where those differ, a binary search per segment and column finds
    where; its sign is that of the exact row0·λ0h + round(row1·λ1h), which float64 compares
    exactly.
    """
    y0, y1, a0, a1 = _axis(logits.shape[0], height)
    x0, x1, b0, b1 = (part[cols] for part in _axis(logits.shape[1], width))
    first, last = rows.start, rows.stop
    starts = np.flatnonzero(np.diff(y0[first:last], prepend=-1)) + first  # first output row of each segment
    stops = np.append(starts[1:], last)
    across = _fma32(logits[:, x0], b0, logits[:, x1] * b1)  # every source row along the width
    upper, lower = across[y0[starts]], across[y1[starts]]  # (segments, columns)
    # With λ ≥ 0, a segment whose two source rows share a sign keeps it all the way down
    # (positive: both > 0; never: both ≤ 0); only the others are searched.
    begin = np.broadcast_to(starts[:, None], upper.shape).copy()
    end = np.where((upper > 0) & (lower > 0), stops[:, None], starts[:, None])
    mixed = np.nonzero((upper > 0) != (lower > 0))
    top, bottom = upper[mixed].astype(np.float64), lower[mixed]
    rising = top <= 0  # false then true down the segment; otherwise true then false
    segment_start, segment_stop = starts[mixed[0]], stops[mixed[0]]
    low, high = segment_start.copy(), segment_stop.copy()
    while True:  # first row where the sign is the segment's second one
        active = np.flatnonzero(low < high)
        if not active.size:
            break
        middle = (low[active] + high[active]) // 2
        row = np.minimum(middle, last - 1)
        flipped = (top[active] * a0[row].astype(np.float64) > -(bottom[active] * a1[row]).astype(np.float64)) == rising[active]
        high[active] = np.where(flipped, middle, high[active])
        low[active] = np.where(flipped, low[active], middle + 1)
    begin[mixed] = np.where(rising, low, segment_start)
    end[mixed] = np.where(rising, segment_stop, low)
    begin, end = begin.T, end.T  # (columns, segments): column-major order
    keep = begin < end
    column = np.broadcast_to(np.arange(cols.start, cols.stop, dtype=np.int32)[:, None], begin.shape)
    # int32: a speckled mask over a 24 MP photo has ~400,000 runs, held by writer threads
    return ColumnRuns(column[keep], begin[keep].astype(np.int32), end[keep].astype(np.int32))


def _reach(positive: np.ndarray, n_out: int) -> tuple[int, int] | None:
    """Output range whose source indices touch a positive logit along one axis."""
    i0, i1, _, _ = _axis(positive.size, n_out)
    hit = np.flatnonzero(positive[i0] | positive[i1])
    return (int(hit[0]), int(hit[-1]) + 1) if hit.size else None


@functools.lru_cache(maxsize=1)
def _kernel_variant() -> str | None:
    """Which arithmetic reproduces F.interpolate on this build, checked once on random probes."""
    generator = torch.Generator().manual_seed(0)
    for name, combine in _VARIANTS.items():
        exact = True
        for (h, w, height, width) in ((64, 64, 413, 290), (256, 256, 757, 1031), (64, 48, 129, 2000)):
            logits = torch.randn(1, 1, h, w, generator=generator) * 8
            expected = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
            got = _values(logits[0, 0].numpy(), height, width, combine, slice(None), slice(None))
            exact = exact and np.array_equal(got.view(np.uint32), expected.view(np.uint32))
        if exact:
            return name
    return None


def _full_size(logits: torch.Tensor, height: int, width: int) -> BoxMask:
    up = F.interpolate(logits[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return BoxMask.from_dense((up[0, 0] > 0).numpy())


def box_masks(low_res_logits: torch.Tensor, height: int, width: int) -> list[BoxMask]:
    """(K, 1, h, w) logits -> K masks of height × width, as `F.interpolate(...) > 0` gives them."""
    logits = low_res_logits[:, 0].detach().float().cpu()
    variant = _kernel_variant() if height + width > _TINY else None
    if variant is None:
        return [_full_size(k, height, width) for k in logits]
    combine = _VARIANTS[variant]
    masks = []
    for k in logits.numpy():
        positive = k > 0
        rows = _reach(positive.any(axis=1), height)
        cols = _reach(positive.any(axis=0), width)
        if rows is None or cols is None:
            masks.append(BoxMask.empty(height, width))
            continue
        if combine is _fma32:
            masks.append(BoxMask(height, width, runs=_runs(k, height, width, slice(*rows), slice(*cols))))
        else:
            crop = _values(k, height, width, combine, slice(*rows), slice(*cols)) > 0
            masks.append(BoxMask(height, width, rows[0], cols[0], crop).tight())
    return masks
