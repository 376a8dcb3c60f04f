"""Metrics against hand-computed values, and `evaluate` on hand-made ground truth and predictions."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2pal.errors import SamPalError
from sam2pal.evaluate import evaluate, summary_lines, write_evaluation
from sam2pal.io.masks import encode_rle
from sam2pal.io.overlays import structure_color
from sam2pal.metrics import boundary, boundary_f1, dice, iou, summarize

HEIGHT, WIDTH = 12, 16


def _square(top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


SQUARE = _square(2, 2, 4)  # rows 2-5, columns 2-5
SHIFTED = _square(2, 3, 4)  # one column to the right
FAR = _square(8, 12, 3)
EMPTY = np.zeros((HEIGHT, WIDTH), dtype=bool)


def test_identical_masks() -> None:
    assert (iou(SQUARE, SQUARE), dice(SQUARE, SQUARE), boundary_f1(SQUARE, SQUARE, 0)) == (
        1.0,
        1.0,
        1.0,
    )


def test_disjoint_masks() -> None:
    assert (iou(FAR, SQUARE), dice(FAR, SQUARE), boundary_f1(FAR, SQUARE, 2)) == (0.0, 0.0, 0.0)


def test_one_pixel_shift() -> None:
    # overlap 12 px, union 20 px; each boundary has 12 px, 6 of them in common
    assert iou(SHIFTED, SQUARE) == pytest.approx(0.6)
    assert dice(SHIFTED, SQUARE) == pytest.approx(0.75)
    assert boundary_f1(SHIFTED, SQUARE, 0) == pytest.approx(0.5)
    assert boundary_f1(SHIFTED, SQUARE, 1) == 1.0
    assert boundary_f1(SHIFTED, SQUARE) == 1.0  # default tolerance 2 px


def test_tolerance_is_euclidean() -> None:
    point = np.zeros((HEIGHT, WIDTH), dtype=bool)
    point[5, 5] = True
    diagonal = np.zeros((HEIGHT, WIDTH), dtype=bool)
    diagonal[6, 6] = True  # sqrt(2) = 1.41 px away

    assert boundary_f1(diagonal, point, 1) == 0.0
    assert boundary_f1(diagonal, point, 1.5) == 1.0


def test_empty_masks() -> None:
    assert (iou(EMPTY, EMPTY), dice(EMPTY, EMPTY), boundary_f1(EMPTY, EMPTY)) == (1.0, 1.0, 1.0)
    assert (iou(EMPTY, SQUARE), dice(EMPTY, SQUARE), boundary_f1(EMPTY, SQUARE)) == (0.0, 0.0, 0.0)
    assert (iou(SQUARE, EMPTY), dice(SQUARE, EMPTY), boundary_f1(SQUARE, EMPTY)) == (0.0, 0.0, 0.0)


def test_boundary_pixels_and_image_edge() -> None:
    assert boundary(SQUARE).sum() == 12 and not boundary(SQUARE)[3:5, 3:5].any()
    full = np.ones((4, 5), dtype=bool)
    assert boundary(full).sum() == 14  # the image edge counts as outside


def test_metric_arguments_are_checked() -> None:
    with pytest.raises(
        ValueError, match=r"masks differ in shape: prediction \(2, 2\), truth \(12, 16\)"
    ):
        iou(np.zeros((2, 2), dtype=bool), SQUARE)
    with pytest.raises(ValueError, match="0 or more pixels"):
        boundary_f1(SQUARE, SQUARE, -1)


def test_summarize() -> None:
    summary = summarize([0.5, 1.0, 0.0])
    assert (summary.mean, summary.min, summary.n) == (0.5, 0.0, 3)
    assert summary.std == pytest.approx(np.sqrt(1 / 6))
    assert summarize([]).n == 0


def _write(
    path: Path,
    images: list[dict],
    annotations: list[tuple[int, int, object]],
    categories: list[str],
) -> Path:
    data = {
        "images": [{"width": WIDTH, "height": HEIGHT, **image} for image in images],
        "annotations": [
            {
                "id": number,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": encode_rle(mask) if isinstance(mask, np.ndarray) else mask,
            }
            for number, (image_id, category_id, mask) in enumerate(annotations, start=1)
        ],
        "categories": [
            {"id": number, "name": name} for number, name in enumerate(categories, start=1)
        ],
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """Ground truth: a.png (eye, leg), b.png (eye; leg truly absent), c.png (not annotated).
    Prediction: eye shifted one column and no leg on a.png; b.png (Label Studio upload name)
    exactly right; a structure and an image the ground truth does not have."""
    gt = _write(
        tmp_path / "gt.json",
        [
            {"id": 1, "file_name": "photos/a.png"},
            {"id": 2, "file_name": "b.png"},
            {"id": 3, "file_name": "c.png"},
        ],
        [(1, 1, [[2, 2, 6, 2, 6, 6, 2, 6]]), (1, 2, _square(6, 10, 2)), (2, 1, _square(0, 0, 4))],
        ["eye", "leg"],
    )
    pred = _write(
        tmp_path / "predictions.json",
        [
            {"id": 1, "file_name": "a.png"},
            {"id": 2, "file_name": "1b3e5f2a-b.png"},
            {"id": 3, "file_name": "extra.png"},
        ],
        [(1, 1, SHIFTED), (2, 1, _square(0, 0, 4)), (1, 3, FAR), (3, 1, SQUARE)],
        ["eye", "leg", "wing"],
    )
    return gt, pred


def test_evaluate_scores_every_structure_of_every_annotated_image(files: tuple[Path, Path]) -> None:
    evaluation = evaluate(*files)

    rows = [
        (s.image, s.structure, s.iou, s.dice, s.boundary_f1, s.predicted) for s in evaluation.scores
    ]
    assert rows == [
        ("a.png", "eye", pytest.approx(0.6), pytest.approx(0.75), 1.0, True),
        ("a.png", "leg", 0.0, 0.0, 0.0, False),
        ("b.png", "eye", 1.0, 1.0, 1.0, True),
        ("b.png", "leg", 1.0, 1.0, 1.0, False),
    ]
    eye, leg = evaluation.summary("eye"), evaluation.summary("leg")
    assert (eye["iou"].mean, eye["iou"].std, eye["iou"].min, eye["iou"].n) == pytest.approx(
        (0.8, 0.2, 0.6, 2)
    )
    assert (leg["dice"].mean, leg["dice"].std, leg["dice"].min) == (0.5, 0.5, 0.0)
    assert evaluation.notes == [
        "1 ground-truth images have no annotation and were not scored",
        "structures only in the prediction, not scored: wing",
        "1 predicted images are not in the ground truth (extra.png); not scored",
    ]


def test_evaluate_tolerance(files: tuple[Path, Path]) -> None:
    evaluation = evaluate(*files, tol_px=0)

    assert evaluation.summary("eye")["boundary_f1"].mean == pytest.approx(0.75)
    assert summary_lines(evaluation)[0] == "2 images matched by file name; boundary F1 within 0 px"


def test_summary_table(files: tuple[Path, Path]) -> None:
    lines = summary_lines(evaluate(*files))

    assert lines[0] == "2 images matched by file name; boundary F1 within 2 px"
    assert lines[1].split() == [
        "structure",
        "n",
        "IoU",
        "mean±std",
        "(min)",
        "Dice",
        "mean±std",
        "(min)",
        "boundary",
        "F1",
        "mean±std",
        "(min)",
    ]
    assert lines[2].split() == [
        "eye",
        "2",
        "0.800±0.200",
        "(0.600)",
        "0.875±0.125",
        "(0.750)",
        "1.000±0.000",
        "(1.000)",
    ]
    assert lines[3].split() == [
        "leg",
        "2",
        "0.500±0.500",
        "(0.000)",
        "0.500±0.500",
        "(0.000)",
        "0.500±0.500",
        "(0.000)",
    ]


def test_write_evaluation(files: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "metrics"
    write_evaluation(evaluate(*files), out)

    with (out / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 4
    assert rows[1] == {
        "image": "a.png",
        "structure": "leg",
        "iou": "0.0",
        "dice": "0.0",
        "boundary_f1": "0.0",
        "truth_area": "4",
        "pred_area": "0",
        "predicted": "False",
    }
    document = json.loads((out / "metrics.json").read_text())
    assert document["boundary_tol_px"] == 2.0
    assert document["per_structure"]["eye"]["iou"] == pytest.approx(0.8)
    assert document["per_structure"]["eye"]["dice"] == pytest.approx(0.875)
    assert (
        document["per_structure"]["leg"]["boundary_f1"] == 0.5
        and document["per_structure"]["leg"]["n"] == 2
    )
    assert len(document["per_image"]) == 4
    with Image.open(out / "metrics.png") as plot:
        pixels = np.asarray(plot.convert("RGB")).reshape(-1, 3)
    colors = {tuple(pixel) for pixel in pixels}
    assert structure_color(0) in colors and structure_color(1) in colors  # each structure's dots
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json", "metrics.png"]


def test_evaluate_problems_are_one_line_errors(files: tuple[Path, Path], tmp_path: Path) -> None:
    gt, _ = files
    other = _write(
        tmp_path / "other.json", [{"id": 1, "file_name": "zzz.png"}], [(1, 1, SQUARE)], ["eye"]
    )
    with pytest.raises(
        SamPalError,
        match=r"no image of .*gt\.json is in .*other\.json \(matched by file name, "
        r"e\.g\. a\.png\)",
    ):
        evaluate(gt, other)

    rotated = _write(
        tmp_path / "rotated.json",
        [{"id": 1, "file_name": "a.png", "width": HEIGHT, "height": WIDTH}],
        [],
        ["eye"],
    )
    with pytest.raises(
        SamPalError,
        match=r"a\.png is 16x12 in .*gt\.json but 12x16 in .*rotated\.json \(one of "
        r"them ignored the photo's EXIF rotation\)",
    ):
        evaluate(gt, rotated)

    twice = _write(
        tmp_path / "twice.json",
        [{"id": 1, "file_name": "x/a.png"}, {"id": 2, "file_name": "y/a.png"}],
        [],
        ["eye"],
    )
    with pytest.raises(SamPalError, match=r"twice\.json: images 1 and 2 are both named a\.png"):
        evaluate(gt, twice)
    with pytest.raises(SamPalError, match=r"--boundary-tol -1 must be 0 or more"):
        evaluate(*files, tol_px=-1)
