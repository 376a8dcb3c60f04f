"""COCO RLE / polygon <-> bool mask, checked against hand-built masks."""

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam2pal.io.masks import decode_segmentation, encode_rle, mask_area, mask_bbox, mask_polygons


def test_rle_round_trip_is_exact() -> None:
    mask = np.random.default_rng(1).random((48, 64)) > 0.6

    rle = encode_rle(mask)

    assert rle["size"] == [48, 64]
    assert isinstance(rle["counts"], str)
    assert np.array_equal(decode_segmentation(rle, 48, 64), mask)
    expected = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"].encode("ascii") == expected["counts"]


def test_compressed_rle_with_bytes_counts() -> None:
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:6] = True
    rle = encode_rle(mask)

    decoded = decode_segmentation({"size": [5, 7], "counts": rle["counts"].encode()}, 5, 7)

    assert np.array_equal(decoded, mask)


def test_uncompressed_rle_is_column_major() -> None:
    # 3x4 mask, runs down the columns: 2 background, 3 foreground, 7 background.
    expected = np.zeros((3, 4), dtype=bool)
    expected[2, 0] = expected[0, 1] = expected[1, 1] = True

    decoded = decode_segmentation({"size": [3, 4], "counts": [2, 3, 7]}, 3, 4)

    assert decoded.dtype == bool
    assert np.array_equal(decoded, expected)


def test_polygon_square() -> None:
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:6, 2:6] = True

    decoded = decode_segmentation([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 10)

    assert mask_area(decoded) == 16
    assert np.array_equal(decoded, expected)


def test_several_polygons_are_merged() -> None:
    decoded = decode_segmentation([[0, 0, 2, 0, 2, 2, 0, 2], [6, 6, 8, 6, 8, 8, 6, 8]], 10, 10)

    assert mask_area(decoded) == 8
    assert decoded[0, 0] and decoded[6, 6] and not decoded[4, 4]


@pytest.mark.parametrize(
    ("segmentation", "reason"),
    [
        ({"size": [3, 4], "counts": [2, 3]}, "cover 5 pixels but the mask has 3x4=12"),
        ({"size": [3, 4], "counts": [2, -3, 13]}, "negative run"),
        ({"size": [3, 5], "counts": [15]}, r"RLE size \[3, 5\] differs from the image size"),
        ({"size": [3, 4], "counts": "z"}, "invalid character"),
        ({"size": [3, 4], "counts": "1"}, "cover 1 pixels"),
        ({"counts": [12]}, "needs 'counts' and 'size'"),
        ([[1, 1, 3, 1, 3]], "even number of coordinates"),
        ([[1, 1, 3, 3]], "at least 3 points"),
        ([[1, 1, "x", 3, 3, 1]], "number lists"),
        ([], "non-empty polygon list or an RLE dict"),
        ("abc", "non-empty polygon list or an RLE dict"),
    ],
)
def test_malformed_segmentation_raises_value_error(segmentation: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_segmentation(segmentation, 3, 4)


def test_bbox_and_area() -> None:
    mask = np.zeros((48, 64), dtype=bool)
    mask[10:20, 5:9] = True
    mask[25, 30] = True

    assert mask_bbox(mask) == [5.0, 10.0, 26.0, 16.0]
    assert mask_area(mask) == 41
    assert mask_bbox(np.zeros((4, 4), dtype=bool)) == [0.0, 0.0, 0.0, 0.0]
    assert mask_area(np.zeros((4, 4), dtype=bool)) == 0
    assert mask_bbox(mask) == coco_mask.toBbox(encode_rle(mask)).tolist()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_polygon_decoding_matches_pycocotools() -> None:
    polygon = [[3.5, 1.2, 60.1, 10.7, 30.3, 45.9, 8.0, 30.0]]
    expected = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygon, 48, 64)))

    assert np.array_equal(decode_segmentation(polygon, 48, 64), expected.astype(bool))


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[char == "#" for char in row] for row in rows])


def test_polygon_of_a_rectangle_is_its_four_corners() -> None:
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 2:7] = True

    assert mask_polygons(mask) == [[7.0, 1.0, 7.0, 3.0, 2.0, 3.0, 2.0, 1.0]]


def test_polygon_traces_an_l_shape_clockwise() -> None:
    mask = _mask(["#..", "#..", "##."])

    polygons = mask_polygons(mask)

    assert polygons == [[1.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 0.0, 3.0, 0.0, 0.0]]
    assert np.array_equal(decode_segmentation(polygons, 3, 3), mask)


def test_diagonal_pixels_are_separate_parts() -> None:
    mask = _mask(["#.", ".#"])

    polygons = mask_polygons(mask)

    assert sorted(polygons) == [
        [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0],
        [2.0, 1.0, 2.0, 2.0, 1.0, 2.0, 1.0, 1.0],
    ]


def test_hole_is_filled_and_an_island_in_it_kept() -> None:
    mask = _mask(["#####", "#...#", "#.#.#", "#...#", "#####"])

    polygons = mask_polygons(mask)

    assert len(polygons) == 2  # the ring's outline and the island; the hole has no polygon
    decoded = decode_segmentation(polygons, 5, 5)
    assert decoded.all()
    assert mask_polygons(np.zeros((4, 4), dtype=bool)) == []


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background not connected (8-neighbours) to the border becomes foreground."""
    height, width = mask.shape
    outside = np.zeros_like(mask)
    stack = [(r, c) for r in range(height) for c in (0, width - 1)]
    stack += [(r, c) for r in (0, height - 1) for c in range(width)]
    while stack:
        r, c = stack.pop()
        if 0 <= r < height and 0 <= c < width and not mask[r, c] and not outside[r, c]:
            outside[r, c] = True
            stack += [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    return ~outside


def test_polygons_rasterise_back_to_the_mask_with_holes_filled() -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        height, width = (int(side) for side in rng.integers(2, 25, 2))
        mask = rng.random((height, width)) < rng.uniform(0.2, 0.8)
        polygons = mask_polygons(mask)
        if not mask.any():
            assert polygons == []
            continue
        assert np.array_equal(decode_segmentation(polygons, height, width), _fill_holes(mask))
