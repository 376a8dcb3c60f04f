"""Full-resolution masks computed inside each structure's box are exactly F.interpolate's."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sam2pal.engine import upsample
from sam2pal.engine.orientation import SEARCHES, orient, restore, restore_box, turned_shape
from sam2pal.engine.upsample import box_masks
from sam2pal.io import bilevel_png
from sam2pal.io.boxmask import BoxMask, ColumnRuns
from sam2pal.io.masks import encode_rle, mask_area, mask_bbox


def _logits(side: int, seed: int) -> torch.Tensor:
    """Three structures as SAM2 gives them: a blob, noise everywhere, and one that is absent."""
    generator = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1, 1, side)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    blob = 12 * (0.25 - ((yy - 0.3) ** 2 + (xx + 0.2) ** 2).sqrt()) + torch.randn(side, side, generator=generator)
    noise = torch.randn(side, side, generator=generator) * 6
    absent = -5 - torch.rand(side, side, generator=generator)
    return torch.stack([blob, noise, absent])[:, None]


def _reference(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    return (F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[:, 0] > 0).numpy()


@pytest.mark.parametrize(("side", "height", "width"), [
    (64, 4000, 6000),  # 24 MP landscape from the 256 px model
    (64, 6000, 4000),
    (256, 3000, 2000),  # SAM2's 1024 px model
    (64, 480, 640),
    (64, 97, 1203),  # thin strip: more output than input rows on one side only
    (64, 40, 50),  # height + width <= 128: PyTorch's other kernel, left to F.interpolate
])
def test_box_masks_equal_full_size_interpolation_bit_for_bit(side: int, height: int, width: int) -> None:
    logits = _logits(side, seed=height + width)
    masks = box_masks(logits, height, width)

    reference = _reference(logits, height, width)
    assert [m.shape for m in masks] == [(height, width)] * 3
    for mask, expected in zip(masks, reference):
        assert np.array_equal(mask.dense(), expected)
    assert masks[2].area() == 0 and masks[0].crop.size < height * width  # the box is the blob's only


def test_the_fast_path_is_the_one_used_here_and_the_fallback_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    assert upsample._kernel_variant() in ("fma", "plain")  # else every mask pays for a full-size map
    logits = _logits(64, seed=5)
    fast = [m.dense() for m in box_masks(logits, 1500, 1100)]
    monkeypatch.setattr(upsample, "_kernel_variant", lambda: None)
    slow = [m.dense() for m in box_masks(logits, 1500, 1100)]
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))


def _exact_round(value: Fraction) -> np.float32:
    """Round to the nearest float32, ties to even, from an exact rational."""
    low = np.float32(float(value))
    if Fraction(float(low)) > value:
        low = np.nextafter(low, np.float32(-np.inf))
    high = np.nextafter(low, np.float32(np.inf))
    below, above = value - Fraction(float(low)), Fraction(float(high)) - value
    if below != above:
        return low if below < above else high
    return low if int(low.view(np.uint32)) % 2 == 0 else high


def test_fused_multiply_add_is_rounded_once_even_at_double_rounding_ties() -> None:
    # 1 + 2^-24 + 2^-60: float64 rounds it to the float32 tie 1 + 2^-24, ties-to-even would give
    # 1.0, but the exact value lies above the tie, so a fused multiply-add gives 1 + 2^-23.
    a = np.array([1 + 2.0**-12], dtype=np.float32)
    b = np.array([2.0**-24 * (1 - 2.0**-12 + 2.0**-24)], dtype=np.float32)
    c = np.array([1.0], dtype=np.float32)
    assert upsample._fma32(a, b, c)[0] == np.float32(1 + 2.0**-23)
    assert (a.astype(np.float64) * b + c).astype(np.float32)[0] == np.float32(1.0)  # the naive way errs

    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(3000).astype(np.float32) * scale for scale in (1, 1e-3, 1))
    got = upsample._fma32(a, b, c)
    expected = [_exact_round(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))) for x, y, z in zip(a, b, c)]
    assert np.array_equal(got, np.array(expected, dtype=np.float32))


def _random_mask(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=bool)
    mask[rng.integers(0, height, 40), rng.integers(0, width, 40)] = True
    mask[3:17, 5:9] = True
    mask[:, width - 3] = True  # a run down a whole column goes on into the next one
    mask[:, width - 2] = True
    return mask


def test_box_mask_gives_what_the_dense_mask_gives() -> None:
    dense = _random_mask(37, 53, seed=1)
    box = BoxMask.from_dense(dense)

    assert np.array_equal(box.dense(), dense)
    assert box.rle() == encode_rle(dense)
    assert box.area() == mask_area(dense) and box.bbox() == mask_bbox(dense)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(bilevel_png.encode(box)))), dense)
    for turns in range(4):
        assert np.array_equal(box.rot90(turns).dense(), np.rot90(dense, turns))
    assert np.array_equal(box.fliplr().dense(), dense[:, ::-1])
    small = np.zeros((37, 53), dtype=bool)
    small[36, 0] = True  # last row, first column: the RLE ends with zeros
    assert BoxMask.from_dense(small).rle() == encode_rle(small)
    empty = BoxMask.empty(37, 53)
    assert empty.rle() == encode_rle(np.zeros((37, 53), dtype=bool)) and empty.bbox() == [0.0, 0.0, 0.0, 0.0]
    assert empty.rot90(1).shape == (53, 37) and empty.rot90(1).area() == 0


def test_a_mask_made_of_column_runs_behaves_as_the_same_mask_made_of_pixels() -> None:
    """Upsampling hands back runs; everything computed from them matches the pixel form."""
    dense = _random_mask(37, 53, seed=3)
    pixels = BoxMask.from_dense(dense)
    runs = BoxMask(37, 53, runs=pixels.column_runs())

    assert np.array_equal(runs.dense(), dense) and np.array_equal(runs.crop, pixels.crop)
    assert runs.rle() == pixels.rle() == encode_rle(dense)
    assert runs.area() == pixels.area() and runs.bbox() == pixels.bbox()
    assert bilevel_png.encode(runs) == bilevel_png.encode(pixels)
    rows = np.minimum(((np.arange(12) + 0.5) * 37 / 12).astype(int), 36)
    cols = np.minimum(((np.arange(17) + 0.5) * 53 / 17).astype(int), 52)
    for mask in (runs, pixels):  # nearest: each preview pixel is the full-size pixel under its centre
        assert np.array_equal(mask.scaled(12, 17).dense(), dense[np.ix_(rows, cols)])
    for turns in range(4):
        assert np.array_equal(runs.rot90(turns).dense(), np.rot90(dense, turns))
    with pytest.raises(ValueError, match="exactly one"):
        BoxMask(37, 53)


def test_runs_that_touch_in_a_column_fill_it_through() -> None:
    """Upsampling may end one run where the next begins (segment borders): the pixels, the PNG
    and the RLE all treat them as one run, wherever the box starts within a byte."""
    for left in (0, 3, 8, 13):
        runs = ColumnRuns(np.array([left, left, left + 2, left + 9]), np.array([2, 5, 0, 4]), np.array([5, 9, 3, 6]))
        mask = BoxMask(12, left + 11, runs=runs)
        dense = np.zeros((12, left + 11), dtype=bool)
        dense[2:9, left] = dense[0:3, left + 2] = dense[4:6, left + 9] = True
        assert np.array_equal(mask.dense(), dense) and mask.rle() == encode_rle(dense)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(bilevel_png.encode(mask)))), dense)


def test_box_mask_scaled_keeps_the_structure_where_it_is() -> None:
    dense = np.zeros((400, 600), dtype=bool)
    dense[100:200, 300:360] = True
    scaled = BoxMask.from_dense(dense).scaled(100, 150)
    expected = np.asarray(Image.fromarray(dense).resize((150, 100), Image.NEAREST))
    assert scaled.shape == (100, 150)
    assert np.abs(scaled.dense().astype(int) - expected).sum() <= 2 * (25 + 15)  # within a pixel at the border
    assert scaled.bbox() == [75.0, 25.0, 15.0, 25.0]


@pytest.mark.parametrize("name", SEARCHES["rot4flip"])
def test_restoring_a_box_mask_equals_restoring_the_dense_mask(name: str) -> None:
    dense = _random_mask(31, 44, seed=2)
    turned = BoxMask.from_dense(dense)
    assert np.array_equal(restore_box(turned, name).dense(), restore(dense[None], name)[0])
    assert turned_shape((31, 44), name) == orient(dense, name).shape


@pytest.mark.parametrize(("height", "width", "top", "left"), [(37, 53, 3, 5), (16, 64, 0, 0), (9, 13, 8, 12), (5, 7, 0, 0)])
def test_bilevel_png_opens_as_the_mask_in_pil(height: int, width: int, top: int, left: int) -> None:
    dense = np.zeros((height, width), dtype=bool)
    dense[top:, left:] = np.random.default_rng(height).random((height - top, width - left)) > 0.5
    data = bilevel_png.encode(BoxMask.from_dense(dense))
    with Image.open(io.BytesIO(data)) as png:
        png.load()
        assert (png.format, png.mode, png.size) == ("PNG", "1", (width, height))
        assert np.array_equal(np.asarray(png), dense)
