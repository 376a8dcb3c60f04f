"""bench/compare_sam2pal.py: only its cheap pure parts (arguments, step split, log parsing, table).
Nothing here downloads or runs the SAM2-PAL script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "compare_sam2pal.py"
_spec = importlib.util.spec_from_file_location("compare_sam2pal", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
import compare_report as report  # noqa: E402  (bench/ is on sys.path once the script is loaded)


def test_defaults_and_flags():
    args = bench.parse_args([])
    assert (args.image_size, args.specimens, args.steps, args.device, args.structures) == (1024, 2, 2, "cpu", 3)
    assert args.keep is None and not args.sam2pal_only and not args.script_only and not args.no_low_memory
    args = bench.parse_args(["--image-size", "512", "--specimens", "4", "--steps", "6", "--keep", "w", "--script-only"])
    assert (args.image_size, args.specimens, args.steps, args.keep, args.script_only) == (512, 4, 6, Path("w"), True)


@pytest.mark.parametrize("argv", [["--image-size", "500"], ["--steps", "0"], ["--specimens", "0"],
                                  ["--sam2pal-only", "--script-only"], ["--device", "mps"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2


@pytest.mark.parametrize("steps, specimens, expected", [(2, 2, (1, 2)), (1, 5, (1, 1)), (4, 2, (2, 2)),
                                                        (3, 2, (3, 1)), (6, 4, (2, 3)), (5, 1, (5, 1))])
def test_split_steps_gives_exact_steps_within_the_specimens(steps, specimens, expected):
    epochs, per_epoch = bench.split_steps(steps, specimens)
    assert (epochs, per_epoch) == expected
    assert epochs * per_epoch == steps and per_epoch <= specimens


_LOG = """\
2026-01-01 10:00:00,000 - INFO - Loaded 3 masks from COCO JSON
2026-01-01 10:00:01,000 - INFO - Trainable parameters: 11,725,617
Epoch 1/2:  50%|#####     | 1/2 [00:20<00:20]\r2026-01-01 10:00:41,500 - INFO - Epoch 1/2 - Loss: 1.6702, Images: 2
2026-01-01 10:00:42,500 - INFO -   \u2192 New best! Saved checkpoint
2026-01-01 10:00:43,000 - WARNING - Error on specimen_0001.jpg: boom
2026-01-01 10:01:22,500 - INFO - Epoch 2/2 - Loss: 1.5000, Images: 1
2026-01-01 10:01:30,000 - INFO - Processing complete!
Images processed: 2/2
"""


def test_parse_script_log_counts_loop_time_without_checkpoint_saving():
    parsed = report.parse_script_log(_LOG)
    assert parsed["train_loop_s"] == pytest.approx(40.5 + 40.0)
    assert (parsed["steps"], parsed["epochs"], parsed["template_masks"], parsed["images_ok"]) == (3, 2, 3, 2)
    assert parsed["failed_steps"] == ["Error on specimen_0001.jpg: boom"]


def test_summarize_divides_by_steps_structures_and_images():
    run = {"rc": 0, "wall_s": 100.0, "peak_rss_kb": 2 * 1024**2}
    timings = {"model_load": [3.0], "train_phase": [30.0], "inference_phase": [8.0], "train_phase_vmhwm_kb": 1024**2}
    row = report.summarize(run, timings, {"train_loop_s": 24.0, "steps": 2, "images_ok": 2}, structures_per_step=3)
    assert row["train_s_per_step"] == 12.0 and row["train_s_per_step_structure"] == 4.0
    assert row["infer_s_per_specimen"] == 4.0 and row["model_load_s"] == 3.0 and row["ok"]
    failed = report.summarize({**run, "rc": 1}, {}, {"train_loop_s": None, "steps": 0, "images_ok": None}, 1)
    assert not failed["ok"] and failed["train_s_per_step_structure"] is None and failed["infer_s_per_specimen"] is None


def test_table_has_ratios_script_over_sam2pal_and_dashes_for_missing():
    a = {"train_s_per_step_structure": 2.0, "infer_s_per_specimen": 1.0, "peak_rss_kb": 1024**2, "structures_per_step": 3}
    b = {"train_s_per_step_structure": 20.0, "infer_s_per_specimen": 25.0, "peak_rss_kb": 4 * 1024**2, "structures_per_step": 1}
    table = report.format_table(a, b)
    lines = {line.split("  ")[0].strip(): line.split() for line in table.splitlines() if "  " in line}
    assert lines["training s / step / structure"][-3:] == ["2.00", "20.00", "10.00x"]
    assert lines["inference s / specimen"][-3:] == ["1.00", "25.00", "25.00x"]
    assert lines["peak RSS GiB (whole run)"][-3:] == ["1.00", "4.00", "4.00x"]
    assert lines["structures trained per step"][-2:] == ["3", "1"]
    c = {"train_s_per_step_structure": 4.0, "infer_s_per_specimen": 1.0, "peak_rss_kb": 2 * 1024**2}
    three = report.format_table(a, b, c)
    lines = {line.split("  ")[0].strip(): line.split() for line in three.splitlines() if "  " in line}
    assert lines["training s / step / structure"][-5:] == ["2.00", "4.00", "20.00", "10.00x", "5.00x"]
    assert lines["peak RSS GiB (whole run)"][-5:] == ["1.00", "2.00", "4.00", "4.00x", "2.00x"]
    assert "script/low-memory" in three.splitlines()[0]
    only = report.format_table(a, None)
    assert only.splitlines()[2].split()[-3:] == ["2.00", "-", "-"]
    assert report.ratio(1.0, 0.0) is None and report.ratio(None, 1.0) is None
