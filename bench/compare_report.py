"""sam2pal against the SAM2-PAL research script, the reading side: each tool's log and output
files turned into numbers, and the side-by-side table with how each number was measured.
Pure functions (no run, no download), so `tests/test_compare_bench.py` checks them cheaply."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

# --- reading results ---------------------------------------------------------------------------

SCRIPT_NAME = "SAM2-PAL v21"
_LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - (\w+) - ([^\r\n]*)")
_EPOCH_DONE = re.compile(r"Epoch (\d+)/(\d+) - Loss: ([\d.naif+-]+), Images: (\d+)")
_EPOCH_START = ("Trainable parameters", "(LoRA mode", "New best! Saved checkpoint", "Epoch ")
_STEP_FAILED = ("OOM on ", "Error on ", "Error processing ")


def _stamp(text: str) -> float:
    import datetime as dt

    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_script_log(text: str) -> dict:
    """Training-loop time, steps and a few facts from the script's log (logging's asctime, ms).

    An epoch's loop time is from the last log line before it starts ('Trainable parameters…',
    or the previous epoch's 'Epoch k/E - Loss…' / 'New best! Saved checkpoint') to its own
    'Epoch k/E - Loss…' line, so checkpoint saving between epochs is not counted."""
    lines = [(_stamp(m.group(1)), m.group(2), m.group(3).strip()) for m in _LOG_LINE.finditer(text)]
    loop_s, steps, epochs, failed = 0.0, 0, 0, []
    anchor = None
    for stamp, level, message in lines:
        done = _EPOCH_DONE.search(message)
        if done and anchor is not None:
            loop_s += stamp - anchor
            steps += int(done.group(4))
            epochs += 1
        if message.startswith(_STEP_FAILED) or "No successful training iterations" in message:
            failed.append(message)
        if message.startswith(_EPOCH_START) or "New best! Saved checkpoint" in message:
            anchor = stamp
    masks = re.search(r"Loaded (\d+) masks from COCO JSON", text)
    processed = re.search(r"Images processed: (\d+)/(\d+)", text)
    return {
        "train_loop_s": loop_s if epochs else None,
        "steps": steps,
        "epochs": epochs,
        "failed_steps": failed,
        "template_masks": int(masks.group(1)) if masks else None,
        "images_ok": int(processed.group(1)) if processed else None,
    }


def parse_sam2pal_outputs(out: Path) -> dict:
    """Training-loop time (epoch wall seconds from validation.json, epoch 0 = zero-shot record),
    steps and pure palindrome-step seconds from train_log.jsonl, images from report.json."""
    result: dict = {"train_loop_s": None, "steps": 0, "epochs": 0, "step_compute_s": None, "images_ok": None}
    validation = out / "adapter" / "validation.json"
    if validation.is_file():
        epochs = [e for e in json.loads(validation.read_text())["epochs"] if e["epoch"] >= 1]
        result["train_loop_s"] = sum(e["seconds"] for e in epochs) if epochs else None
        result["epochs"] = len(epochs)
    log = out / "adapter" / "train_log.jsonl"
    if log.is_file():
        step_seconds = [e["seconds"] for e in map(json.loads, log.read_text().splitlines()) if "step" in e]
        result["steps"] = len(step_seconds)
        result["step_compute_s"] = statistics.median(step_seconds) if step_seconds else None
    report = out / "report.json"
    if report.is_file():
        result["images_ok"] = json.loads(report.read_text())["n_ok"]
    return result


def summarize(run: dict, timings: dict, parsed: dict, structures_per_step: int) -> dict:
    """One tool's row: the measured numbers and those derived from them (None where missing)."""
    first = lambda key: (timings.get(key) or [None])[0]  # noqa: E731
    row = {
        "ok": run["rc"] == 0,
        "rc": run["rc"],
        "wall_s": run["wall_s"],
        "cpu_s": run.get("cpu_s"),
        "load": run.get("load"),
        "peak_rss_kb": run["peak_rss_kb"],
        "train_rss_kb": timings.get("train_phase_vmhwm_kb"),
        "cuda_bytes": timings.get("cuda_max_allocated_bytes"),
        "model_load_s": sum(timings["model_load"]) if timings.get("model_load") else None,
        "train_phase_s": first("train_phase"),
        "inference_phase_s": first("inference_phase"),
        "train_phase_cpu_s": first("train_phase_cpu"),
        "inference_phase_cpu_s": first("inference_phase_cpu"),
        "structures_per_step": structures_per_step,
        **parsed,
    }
    steps, loop = row.get("steps"), row.get("train_loop_s")
    row["train_s_per_step"] = loop / steps if loop is not None and steps else None
    row["train_s_per_step_structure"] = (
        row["train_s_per_step"] / structures_per_step if row["train_s_per_step"] is not None else None
    )
    images, infer = row.get("images_ok"), row.get("inference_phase_s")
    row["infer_s_per_specimen"] = infer / images if infer is not None and images else None
    return row


# --- the table ---------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _gib(kb: float | None) -> float | None:
    return None if kb is None else kb / 1024**2


def format_table(sam2pal: dict | None, script: dict | None, low_memory: dict | None = None) -> str:
    """The comparison as aligned text: the three headline rows, then the details they came from.
    One column per sam2pal configuration, then the script, then script/sam2pal for each. A tool
    that was not run (None) or failed shows '-'; `low_memory` None leaves its columns out."""
    ours = [("sam2pal", sam2pal or {})] + ([("--low-memory", low_memory)] if low_memory is not None else [])
    b = script or {}
    keyed: list[tuple[str, object, bool, int]] = [
        # label, key or function of a row, show ratio, digits
        ("training s / step / structure", "train_s_per_step_structure", True, 2),
        ("inference s / specimen", "infer_s_per_specimen", True, 2),
        ("peak RSS GiB (whole run)", lambda r: _gib(r.get("peak_rss_kb")), True, 2),
    ]
    if any(r.get("cuda_bytes") is not None for _, r in ours) or b.get("cuda_bytes") is not None:
        keyed.append(("peak CUDA allocated GiB", lambda r: None if r.get("cuda_bytes") is None else r["cuda_bytes"] / 1024**3, True, 2))
    details = [
        ("structures trained per step", "structures_per_step", False, 0),
        ("training steps run", "steps", False, 0),
        ("training s / step (loop wall / steps)", "train_s_per_step", True, 2),
        ("  sam2pal step compute only (train_log)", "step_compute_s", False, 2),
        ("training loop s", "train_loop_s", True, 1),
        ("training phase s (setup, loop, saves)", "train_phase_s", True, 1),
        ("specimens predicted", "images_ok", False, 0),
        ("inference phase s", "inference_phase_s", True, 1),
        ("training phase CPU s (all threads)", "train_phase_cpu_s", True, 1),
        ("inference phase CPU s (all threads)", "inference_phase_cpu_s", True, 1),
        ("model load s", "model_load_s", True, 1),
        ("peak RSS GiB by end of training", lambda r: _gib(r.get("train_rss_kb")), True, 2),
        ("child process wall s", "wall_s", True, 1),
        ("child process CPU s (user+sys)", "cpu_s", True, 1),
    ]
    label_width = max(len(r[0]) for r in keyed + details)
    names = [name for name, _ in ours]
    header = (f"{'':<{label_width}}  " + "  ".join(f"{n:>12}" for n in names) + f"  {SCRIPT_NAME:>13}  "
              + "  ".join(f"{'script/' + n.strip('-'):>17}" for n in names))
    lines = [header, "-" * len(header)]

    def line(label, key, show_ratio, digits):
        get = key if callable(key) else (lambda r: r.get(key))
        script_value = get(b)
        values = [get(r) for _, r in ours]
        cells = [f"{_fmt(v, digits):>12}" for v in values] + [f"{_fmt(script_value, digits):>13}"]
        for v in values:
            r = ratio(script_value, v) if show_ratio else None
            text = "" if not show_ratio else "-" if r is None else _fmt(r, 2) + "x"
            cells.append(f"{text:>17}")
        return f"{label:<{label_width}}  " + "  ".join(cells)

    lines += [line(*r) for r in keyed]
    lines.append("-" * len(header))
    lines += [line(*r) for r in details]
    loads = [f"{name} {row['load'][0]:.1f} -> {row['load'][1]:.1f}" for name, row in ours + [("script", b)]
             if row.get("load")]
    if loads:
        lines.append("1-min load average before -> after each tool (above ~the core count, other processes "
                     "competed for the CPU): " + ", ".join(loads))
    return "\n".join(lines)


HOW_MEASURED = """\
How each number was measured:
  training s / step / structure: training-loop wall time / steps run / structures one step trains.
    sam2pal trains all K structures in one palindrome step (K = {k}); the script trains one
    structure per step (each step picks one template mask at random), so it is divided by 1.
    Loop time, sam2pal: the epochs' wall seconds in adapter/validation.json (each step's specimen
    load + encoding on first use, augmentation, palindrome, backward, optimizer; not setup, not
    adapter saving). Script: from its log timestamps (ms), each epoch from the last log line
    before its loop ('Trainable parameters' or the previous epoch's lines) to its 'Epoch k/E -
    Loss' line (image load + encoding of template and specimen every step, 4 track steps,
    backward, optimizer; not setup, not checkpoint saving).
  inference s / specimen: wall time of the inference phase / specimens predicted. sam2pal:
    sam2pal.api.predict (template memory, encode + propagate, masks, overlays, COCO, report).
    Script: SAM2PAL.process_batch (per specimen a 4-frame palindrome pseudo-video letterboxed to
    its 2048 px canvas and written as JPEGs, init_state, propagation, round-trip IoU, mask PNGs,
    COCO). Both timed by a wrapper the child process puts around that function; nothing else
    of either tool is changed.
  peak RSS: ru_maxrss from os.wait4 on the tool's child process (the largest process of its
    tree), i.e. the whole run: model load, fine-tuning and inference in one process.
  'by end of training': the child's VmHWM right after the training phase returned.
  CPU s: process CPU time of all threads, for a phase (time.process_time around the same
    function) or the whole child (ru_utime + ru_stime from wait4). Less sensitive than wall time
    to other processes sharing the cores; CPU s / wall s near the core count means the tool kept
    every core busy, much lower means it waited (I/O, one thread, or other processes: see the
    load averages)."""
